"""Where a CLIP's towers are redundant (paper §3.2, the analysis behind manual inheritance; claim C4).

The paper motivates its manual inheritance rule — keep the text tower's width but drop layers, keep the image
tower's depth but drop channels — by three observations: neighbouring text layers compute similar things, removing
text layers costs little while removing image layers costs much, and the learned masks of automatic inheritance
remove text depth and image width. This module holds the measurements, on any CLIP that
:func:`tinyclip.pruned.to_pruned` accepts (the mini teacher, the ViT-B/32-shaped models):

* :func:`linear_cka` / :func:`layer_similarity` — linear CKA (Kornblith et al. 2019) between every pair of one
  tower's layer outputs (the residual stream after each block, averaged over tokens; row 0 is the block input);
* :func:`without_layers` — the model with whole blocks of one tower removed (a removed pre-LN block is an
  identity on the residual stream);
* :func:`thinner` — the model with the same number of attention heads and FFN neurons removed from every layer of
  one tower, chosen by weight magnitude (:func:`head_magnitude`, :func:`neuron_magnitude`) or at random (the
  control); removing k of L layers and removing k/L of every layer's heads and neurons remove the same block
  parameters (up to LayerNorms), which is how the two are compared at matched size;
* :class:`TowerScorer` — the evaluation sets loaded once as tensors, each tower's embeddings of the unmodified
  model kept, so a model with one tower changed is scored by re-encoding that tower only; its per-item outcomes
  are those of :func:`tinyclip.eval.evaluate_model` (same templates, same ranking rules).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import TinyCLIPError
from .inherit.auto import TowerKeep, slice_model
from .pruned import PrunedCLIP, PrunedConfig, to_pruned

TOWERS = ("vision", "text")


def _tower(model: PrunedCLIP, tower: str):
    if tower not in TOWERS:
        raise TinyCLIPError(f"unknown tower {tower!r}; choose vision or text")
    return model.visual if tower == "vision" else model.text


def depth(model: torch.nn.Module, tower: str) -> int:
    """Number of blocks in one tower of a CLIP (open_clip or pruned)."""
    return len(_tower(to_pruned(model), tower).blocks)


# ------------------------------------------------------------------------------------------- layer similarity
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same N inputs ([N, d1], [N, d2]): 1 for representations equal
    up to rotation and isotropic scaling, near 0 for unrelated ones."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.t() @ x).pow(2).sum()
    norm = (x.t() @ x).pow(2).sum().sqrt() * (y.t() @ y).pow(2).sum().sqrt()
    return float(cross / norm) if norm > 0 else float("nan")


@torch.no_grad()
def layer_outputs(model: PrunedCLIP, tower: str, inputs: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """The residual stream of ``tower`` before the first block and after every block, averaged over tokens (text:
    over the tokens up to and including the end-of-text token, those the causal readout can see): L + 1 tensors
    of [N, width]."""
    part = _tower(model, tower)
    outs: list[list[torch.Tensor]] = [[] for _ in range(len(part.blocks) + 1)]
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        if tower == "vision":
            x = part.ln_pre(part.embed(batch))
            weights = torch.full(x.shape[:2], 1.0 / x.shape[1])
        else:
            x = part.embed(batch)
            visible = torch.arange(batch.shape[1])[None, :] <= batch.argmax(dim=-1)[:, None]
            weights = visible.float() / visible.sum(1, keepdim=True)
        pool = lambda h: torch.einsum("bt,btd->bd", weights.to(h.dtype), h).float()  # noqa: E731
        outs[0].append(pool(x))
        for i, block in enumerate(part.blocks):
            x = block(x, part.causal)
            outs[i + 1].append(pool(x))
    return [torch.cat(o) for o in outs]


def layer_similarity(model: PrunedCLIP, tower: str, inputs: torch.Tensor) -> np.ndarray:
    """[L + 1, L + 1] linear CKA between the tower's layer outputs (:func:`layer_outputs`) on ``inputs``."""
    feats = layer_outputs(model, tower, inputs)
    n = len(feats)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = linear_cka(feats[i], feats[j])
    return out


# ------------------------------------------------------------------------------------------- structured removal
def _whole_keep(config: PrunedConfig) -> dict[str, TowerKeep]:
    return {name: TowerKeep(hidden=torch.arange(cfg.width),
                            heads=[torch.arange(h) if h else None for h in cfg.heads],
                            mlp=[torch.arange(f) if f else None for f in cfg.mlp])
            for name, cfg in config.towers().items()}


def _sliced(model: PrunedCLIP, keep: dict[str, TowerKeep]) -> PrunedCLIP:
    config = PrunedConfig.from_dict(model.config.to_dict())
    for name, cfg in config.towers().items():
        cfg.heads = [0 if k is None else int(k.numel()) for k in keep[name].heads]
        cfg.mlp = [0 if k is None else int(k.numel()) for k in keep[name].mlp]
    config.validate()
    return slice_model(model, config, keep).eval()


def without_layers(model: torch.nn.Module, tower: str, layers: Sequence[int]) -> PrunedCLIP:
    """A copy of ``model`` whose ``tower`` lacks the blocks ``layers`` (attention and FFN, with their LayerNorms)."""
    model = to_pruned(model)
    n = depth(model, tower)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise TinyCLIPError(f"the {tower} tower has layers 0..{n - 1}; cannot remove {bad}")
    keep = _whole_keep(model.config)
    for i in layers:
        keep[tower].heads[i] = keep[tower].mlp[i] = None
    return _sliced(model, keep)


def head_magnitude(block) -> torch.Tensor:
    """Per head: the L2 norm of its query, key and value rows and its output-projection columns."""
    attn = block.attn
    width = attn.in_proj.in_features
    qkv = attn.in_proj.weight.detach().view(3, attn.heads, attn.head_dim, width)
    out = attn.out_proj.weight.detach().view(-1, attn.heads, attn.head_dim)
    return (qkv.pow(2).sum(dim=(0, 2, 3)) + out.pow(2).sum(dim=(0, 2))).sqrt()


def neuron_magnitude(block) -> torch.Tensor:
    """Per FFN neuron: the product of the norms of its input row and its output column (its largest possible
    contribution to the residual stream, up to the activation)."""
    fc, proj = block.mlp.c_fc.weight.detach(), block.mlp.c_proj.weight.detach()
    return fc.norm(dim=1) * proj.norm(dim=0)


def _lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices kept when the ``n`` lowest-scoring units go (ties broken by index, so the result is reproducible)."""
    order = torch.argsort(scores, stable=True)
    return torch.sort(order[n:]).values


def thinner(model: torch.nn.Module, tower: str, fraction: float, rule: str = "magnitude",
            seed: int = 0) -> PrunedCLIP:
    """A copy of ``model`` with ``round(fraction * heads)`` attention heads and ``round(fraction * neurons)`` FFN
    neurons removed from every layer of ``tower``: the lowest by weight magnitude (``rule="magnitude"``) or
    drawn at random (``"random"``, seeded)."""
    if rule not in ("magnitude", "random"):
        raise TinyCLIPError(f"unknown width-removal rule {rule!r}; choose magnitude or random")
    if not 0.0 <= fraction < 1.0:
        raise TinyCLIPError(f"width fraction must be in [0, 1), got {fraction}")
    model = to_pruned(model)
    keep = _whole_keep(model.config)
    generator = torch.Generator().manual_seed(seed)
    for i, block in enumerate(_tower(model, tower).blocks):
        for kind, present, score in (("heads", block.attn, head_magnitude), ("mlp", block.mlp, neuron_magnitude)):
            if present is None:
                continue
            units = score(block)
            if rule == "random":
                units = torch.rand(len(units), generator=generator)
            getattr(keep[tower], kind)[i] = _lowest(units, int(round(fraction * len(units))))
    return _sliced(model, keep)


# ------------------------------------------------------------------------------------------- fast scoring
@dataclass
class _Set:
    task: str                        # "zeroshot_classification" or "zeroshot_retrieval"
    images: torch.Tensor             # preprocessed, [N, 3, H, W]
    texts: list[torch.Tensor]        # classification: tokens per class; retrieval: one token tensor
    labels: list                     # what tinyclip.eval's item functions expect as the loader's labels


class TowerScorer:
    """Evaluation sets held in memory; scores models that differ from ``reference`` in one tower.

    ``score(model, changed="vision")`` re-encodes the images only and reuses the reference's text embeddings
    (and the other way round), returning per-item outcomes keyed like ``eval_items.json``."""

    def __init__(self, reference: torch.nn.Module, preprocess: Callable, tokenizer: Callable, eval_root: str | Path,
                 tasks: Sequence[str] = ("fmnist", "tux", "openmoji"), batch_size: int = 512):
        from clip_benchmark.datasets.builder import build_dataset

        from .data.profiles import EVAL_SETS
        from .eval import _check_wds

        self.batch_size = batch_size
        self.sets: dict[str, _Set] = {}
        for name in tasks:
            task = EVAL_SETS[name][0]
            root = Path(eval_root) / name
            _check_wds(root, name, classification=task == "zeroshot_classification")
            ds = build_dataset(f"wds/{name}", root=str(root), transform=preprocess, split="test", task=task)
            loader = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=0)
            images, labels = [], []
            for batch_images, second in loader:
                images.append(batch_images)
                labels.append(second if torch.is_tensor(second) else [len(t) for t in second])
                if task != "zeroshot_classification":
                    labels[-1] = (labels[-1], [text for texts in second for text in texts])
            if task == "zeroshot_classification":  # clip-benchmark's classifier: every template, per class
                texts = [tokenizer([t.format(c=c) for t in ds.templates]) for c in ds.classes]
            else:
                texts = [tokenizer([c for _, caps in labels for c in caps])]
                labels = [counts for counts, _ in labels]
            self.sets[name] = _Set(task, torch.cat(images), texts, labels)
        self.reference = reference.eval()
        self._cache = {"vision": self._images(reference), "text": self._texts(reference)}

    @torch.no_grad()
    def _images(self, model) -> dict[str, torch.Tensor]:
        return {name: torch.cat([model.encode_image(s.images[i:i + self.batch_size]).float()
                                 for i in range(0, len(s.images), self.batch_size)]) for name, s in self.sets.items()}

    @torch.no_grad()
    def _texts(self, model) -> dict[str, list[torch.Tensor]]:
        return {name: [model.encode_text(t).float() for t in s.texts] for name, s in self.sets.items()}

    def score(self, model: torch.nn.Module | None = None, changed: str | None = None) -> dict[str, dict[str, list[int]]]:
        """Per-item outcomes of ``model`` (the reference when ``None``), whose only change is the ``changed`` tower."""
        from .eval import classification_items, retrieval_items

        images, texts = self._cache["vision"], self._cache["text"]
        if model is not None:
            if changed not in TOWERS:
                raise TinyCLIPError(f"say which tower changed (vision or text), got {changed!r}")
            model.eval()
            if changed == "vision":
                images = self._images(model)
            else:
                texts = self._texts(model)
        out = {}
        for name, s in self.sets.items():
            recorder = SimpleNamespace(images=[images[name]], texts=texts[name])
            out[name] = (classification_items(recorder, s.labels) if s.task == "zeroshot_classification"
                         else retrieval_items(recorder, s.labels))
        return out

    def retrieval_inputs(self, n: int = 1024, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` (image, caption) pairs of the retrieval sets, drawn with a fixed seed: inputs for CKA."""
        pairs = [(s.images, s.texts[0]) for s in self.sets.values() if s.task != "zeroshot_classification"]
        if not pairs:
            raise TinyCLIPError("layer similarity needs a retrieval set (tux or openmoji) among the tasks")
        images = torch.cat([p[0] for p in pairs])
        tokens = torch.cat([p[1] for p in pairs])
        if len(images) != len(tokens):
            raise TinyCLIPError("layer similarity needs one caption per image")
        pick = np.random.default_rng(seed).permutation(len(images))[:n]
        return images[pick], tokens[pick]
