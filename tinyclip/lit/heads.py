"""Training the projection heads and the temperature on cached tower features.

AdamW with warm-up and a cosine schedule; the loss (:func:`lit_contrastive_loss`) counts every pair with the
same caption text as a positive. A hash-chosen share of the samples is held out
(:func:`holdout_split`), and the heads with the lowest held-out loss are the ones kept.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import TinyCLIPError
from .features import FeatureCache
from .model import LiTTeacher


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
