"""Distillation losses: affinity mimicking (paper section 3.1) and the other interaction modes of claim C1.

TinyCLIP's student learns the teacher's *image-text affinity*: for a batch of L2-normalised features,
``A_i2t[i, j] = softmax_j(s · cos(I_i, T_j))`` (each image's distribution over the batch's texts) and
``A_t2i`` (each text's distribution over the images). The loss is a soft-target cross-entropy of the
student's log-affinity against the teacher's affinity, ``L_distill = L_I2T + L_T2I`` (paper eq. in §3.1).
Unlike the identity target of contrastive learning, this also teaches how the *negative* pairs relate.

Terms (``LossConfig`` weights; a term with weight 0 is not computed):

* ``contrastive``  L0, ground-truth InfoNCE: open_clip's ``ClipLoss`` (reused, not re-implemented).
* ``affinity``     L1, affinity mimicking, image->text and text->image rows. ``affinity_i2t`` /
  ``affinity_t2i`` weight one direction alone (the I2T-only / T2I-only ablation arms).
* ``feature``      feature mimicking: ``||P s - t||²`` per sample (summed over the embedding dim, averaged
  over the batch), image plus text, where ``P`` is a learned bias-free ``nn.Linear`` shared by both
  modalities when the student and teacher dims differ (identity otherwise). Squared error rather than
  ``1 - cos``: with equal dims and unit vectors it *is* ``2·(1 - cos)``, so nothing is lost, and with a
  projection it also pins the projected norm to the teacher's, the usual feature-distillation target
  (e.g. CLIP-KD's FD). One projection for both modalities maps the student's joint space onto the
  teacher's as a whole, so it cannot align the two modalities separately.
* ``image_image`` / ``text_text``  single-modality affinity: rows ``softmax_j(s · cos(I_i, I_j))``
  (resp. texts), student vs teacher, soft-target cross-entropy. **The diagonal (j = i) is excluded**: its
  cosine is always 1 for both models, so it carries no information, and at s = 50 it would take nearly all
  the softmax mass and make the term (and its gradient) vanish. The rows are distributions over the
  *other* samples of the global batch.

Logit scales are exponentiated (what ``open_clip`` models return). Each model uses its own scale unless
``fixed_logit_scale`` is set, in which case every term (contrastive included) uses that one value.

Distributed training follows open_clip's ``ClipLoss`` semantics (``open_clip.loss.gather_features``):
with ``local_loss`` the logits are this rank's rows against the global columns, else every rank builds the
full global matrix. All terms (feature mimicking included) use the same rows, so the terms' gradients keep
their relative scale under either setting. With ``gather_with_grad=True`` and DDP gradient averaging, the
gradients equal those of a one-process run on the global batch (see tests/test_losses.py).

Deviations from the paper and from the official code (microsoft/Cream TinyCLIP, ``clip_soft_loss.py``):

1. ``affinity_reduction="sum"`` (default) is the paper's ``L_I2T + L_T2I``; the official code averages the
   two directions (``0.5·each``), available as ``"mean"`` (which equals open_clip's ``DistillClipLoss``
   distill term). Official ``alpha``/``weight`` map to ``affinity = alpha·weight, affinity_reduction="mean",
   contrastive = (1 - alpha)·weight``.
2. Logit scale: default is each model's own learned scale. The official scripts (``--logit-scale 50``) and,
   per the review of the paper, its default temperature 1/50 fix both scales at 50:
   ``fixed_logit_scale=50.0``. The trainer should then also freeze the student's ``logit_scale`` (at
   ``log 50``), because it receives no gradient here.
3. The losses are computed in float32 with autocast disabled; the official code computes the logits in fp16.
4. Extra interaction modes for C1 that the official code does not have: contrastive only, I2T only,
   T2I only, feature mimicking, image-image and text-text affinity (the official code has affinity
   mimicking plus an optional InfoNCE term only).
5. ``local_loss=False`` is allowed (the official code asserts ``local_loss=True``); both give the same
   values and gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, gather_features
from torch import Tensor, nn

from .errors import TinyCLIPError

__all__ = ["C1_MODES", "DistillationLoss", "LossConfig"]

REDUCTIONS = ("sum", "mean")
# Per-direction factor of the affinity weight for each reduction.
_REDUCTION_FACTOR = {"sum": 1.0, "mean": 0.5}

# Base interaction modes; ``LossConfig.from_mode`` joins them with "+" ("contrastive+affinity").
_BASE_MODES: dict[str, dict[str, float]] = {
    "contrastive": {"contrastive": 1.0},
    "affinity": {"affinity": 1.0},
    "i2t": {"affinity_i2t": 1.0},
    "t2i": {"affinity_t2i": 1.0},
    "feature": {"feature": 1.0},
    "image_image": {"image_image": 1.0},
    "text_text": {"text_text": 1.0},
}
# The arms of the C1 ablation (affinity mimicking vs the other interaction modes).
C1_MODES = ("contrastive", "affinity", "contrastive+affinity", "i2t", "t2i", "feature", "image_image",
            "text_text", "image_image+text_text")

_OPTIONAL_WEIGHTS = ("affinity_i2t", "affinity_t2i")
_WEIGHTS = ("contrastive", "affinity", "affinity_i2t", "affinity_t2i", "feature", "image_image", "text_text")
_TEACHER_TERMS = ("affinity_i2t", "affinity_t2i", "feature", "image_image", "text_text")
_SCALED_TEACHER_TERMS = ("affinity_i2t", "affinity_t2i", "image_image", "text_text")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class LossConfig:
    """Weights of the loss terms (plain data, e.g. from a recipe's ``loss:`` mapping); validated on creation.

    ``affinity`` weights both directions; ``affinity_i2t`` / ``affinity_t2i``, when not None, replace it for
    one direction. ``affinity_reduction`` multiplies each direction by 1 ("sum", paper) or 0.5 ("mean",
    official code). ``fixed_logit_scale`` is the exponentiated scale (50.0 means temperature 1/50).
    """

    contrastive: float = 0.0
    affinity: float = 1.0
    affinity_reduction: str = "sum"
    feature: float = 0.0
    image_image: float = 0.0
    text_text: float = 0.0
    fixed_logit_scale: float | None = None
    affinity_i2t: float | None = None
    affinity_t2i: float | None = None

    def __post_init__(self) -> None:
        for name in _WEIGHTS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_WEIGHTS:
                continue
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise TinyCLIPError(f"loss weight {name}={value!r} is invalid; use a finite number >= 0")
            setattr(self, name, float(value))
        if self.affinity_reduction not in REDUCTIONS:
            raise TinyCLIPError(f"affinity_reduction={self.affinity_reduction!r} is unknown; use one of {REDUCTIONS}")
        scale = self.fixed_logit_scale
        if scale is not None:
            if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
                raise TinyCLIPError(f"fixed_logit_scale={scale!r} is invalid; use null or the exponentiated "
                                    "scale > 0 (e.g. 50 for temperature 1/50)")
            self.fixed_logit_scale = float(scale)
        if not self.term_weights():
            raise TinyCLIPError("every loss weight is 0; set at least one of " + ", ".join(_WEIGHTS) + " > 0")

    @property
    def weight_i2t(self) -> float:
        return self.affinity if self.affinity_i2t is None else self.affinity_i2t

    @property
    def weight_t2i(self) -> float:
        return self.affinity if self.affinity_t2i is None else self.affinity_t2i

    def term_weights(self) -> dict[str, float]:
        """Effective weight of each active term: ``total = sum(w[k] * terms[k])`` over the returned keys."""
        factor = _REDUCTION_FACTOR[self.affinity_reduction]
        weights = {
            "contrastive": self.contrastive,
            "affinity_i2t": self.weight_i2t * factor,
            "affinity_t2i": self.weight_t2i * factor,
            "feature": self.feature,
            "image_image": self.image_image,
            "text_text": self.text_text,
        }
        return {name: w for name, w in weights.items() if w > 0}

    @property
    def needs_teacher(self) -> bool:
        return any(name in _TEACHER_TERMS for name in self.term_weights())

    @classmethod
    def from_mode(cls, mode: str, **overrides: Any) -> "LossConfig":
        """Preset for one C1 arm: base modes joined by "+" (see ``C1_MODES``), each at weight 1, others 0."""
        if not isinstance(mode, str) or not mode.strip():
            raise TinyCLIPError(f"loss mode {mode!r} is invalid; use one of {C1_MODES} (or base modes joined by '+')")
        values: dict[str, Any] = {"contrastive": 0.0, "affinity": 0.0, "feature": 0.0, "image_image": 0.0,
                                  "text_text": 0.0}
        for part in (p.strip() for p in mode.split("+")):
            if part not in _BASE_MODES:
                raise TinyCLIPError(f"loss mode part {part!r} in {mode!r} is unknown; use base modes "
                                    f"{tuple(_BASE_MODES)} joined by '+'")
            values.update(_BASE_MODES[part])
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TinyCLIPError(f"unknown loss option(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LossConfig":
        """Build from a recipe mapping; an optional ``mode`` key selects a preset that the other keys override."""
        if not isinstance(d, Mapping):
            raise TinyCLIPError(f"loss config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"mode"})
        if unknown:
            raise TinyCLIPError(f"unknown loss option(s) {unknown}; known: {sorted(known | {'mode'})}")
        rest = {k: v for k, v in d.items() if k != "mode"}
        if "mode" in d:
            return cls.from_mode(d["mode"], **rest)
        return cls(**rest)


def _soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Row-wise ``-sum_j softmax(teacher)_ij · log_softmax(student)_ij``, averaged over rows."""
    return F.cross_entropy(student_logits, teacher_logits.softmax(dim=1))


def _without_self_pairs(logits: Tensor, row_offset: int) -> Tensor:
    """Drop entry (i, i + row_offset) of each row: [R, C] -> [R, C - 1]. Row i is global sample i + row_offset."""
    rows, cols = logits.shape
    row_ids = torch.arange(rows, device=logits.device) + row_offset
    keep = torch.arange(cols, device=logits.device)[None, :] != row_ids[:, None]
    return logits[keep].view(rows, cols - 1)


class DistillationLoss(nn.Module):
    """Weighted sum of the active ``LossConfig`` terms for one step (see the module docstring).

    ``forward`` takes L2-normalised ``[B_local, D]`` features and exponentiated logit scales and returns
    ``{"loss": total, <term>: unweighted value, ...}``. It owns a feature projection (parameters!) only when
    the feature term is on and ``student_dim != teacher_dim``; give ``loss.parameters()`` to the optimiser
    and, under DDP, average its gradients like the model's (e.g. wrap model and loss in one DDP module).
    """

    def __init__(self, cfg: LossConfig, student_dim: int, teacher_dim: int, *, rank: int = 0, world_size: int = 1,
                 local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__()
        if not isinstance(cfg, LossConfig):
            raise TinyCLIPError(f"DistillationLoss needs a LossConfig, got {type(cfg).__name__}")
        for name, dim in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise TinyCLIPError(f"{name}={dim!r} is invalid; use the model's embed_dim (a positive int)")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise TinyCLIPError(f"rank={rank!r}, world_size={world_size!r} are invalid; need 0 <= rank < world_size")
        self.cfg = cfg
        self.weights = cfg.term_weights()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.rank = rank
        self.world_size = world_size
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.clip_loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                                  rank=rank, world_size=world_size)
        self.feature_proj: nn.Linear | None = None
        if "feature" in self.weights and student_dim != teacher_dim:
            self.feature_proj = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, student_image: Tensor, student_text: Tensor, teacher_image: Tensor | None,
                teacher_text: Tensor | None, student_logit_scale: Tensor,
                teacher_logit_scale: Tensor | None) -> dict[str, Tensor]:
        self._check_inputs(student_image, student_text, teacher_image, teacher_text, student_logit_scale,
                           teacher_logit_scale)
        # Soft targets over a batch are sensitive to fp16 rounding of s·cos (s = 50..100), so compute in fp32.
        with torch.autocast(device_type=student_image.device.type, enabled=False):
            terms = self._terms(student_image.float(), student_text.float(), teacher_image, teacher_text,
                                student_logit_scale, teacher_logit_scale)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms}

    # -- helpers ---------------------------------------------------------------------------------------------

    def _scale(self, logit_scale: Tensor | float | None, like: Tensor) -> Tensor:
        if self.cfg.fixed_logit_scale is not None:
            return torch.tensor(self.cfg.fixed_logit_scale, dtype=torch.float32, device=like.device)
        return torch.as_tensor(logit_scale, device=like.device).float()

    def _rows_and_columns(self, image: Tensor, text: Tensor, with_grad: bool) -> tuple[tuple[Tensor, Tensor],
                                                                                       tuple[Tensor, Tensor]]:
        """(rows, columns) of every B×B logit matrix, as (image, text) pairs, with ClipLoss's gathering rules."""
        if self.world_size == 1:
            return (image, text), (image, text)
        all_image, all_text = gather_features(image, text, local_loss=self.local_loss, gather_with_grad=with_grad,
                                              rank=self.rank, world_size=self.world_size)
        rows = (image, text) if self.local_loss else (all_image, all_text)
        return rows, (all_image, all_text)

    def _terms(self, s_image: Tensor, s_text: Tensor, t_image: Tensor | None, t_text: Tensor | None,
               s_scale_in: Tensor, t_scale_in: Tensor | None) -> dict[str, Tensor]:
        w = self.weights
        needs_scale = "contrastive" in w or any(k in w for k in _SCALED_TEACHER_TERMS)
        s_scale = self._scale(s_scale_in, s_image) if needs_scale else None
        terms: dict[str, Tensor] = {}
        if "contrastive" in w:
            terms["contrastive"] = self.clip_loss(s_image, s_text, s_scale)
        if not self.cfg.needs_teacher:
            return terms

        (s_rows_i, s_rows_t), (s_cols_i, s_cols_t) = self._rows_and_columns(s_image, s_text, self.gather_with_grad)
        with torch.no_grad():  # the teacher is the target: never back-propagate into it
            (t_rows_i, t_rows_t), (t_cols_i, t_cols_t) = self._rows_and_columns(
                t_image.detach().float(), t_text.detach().float(), with_grad=False)
            t_scale = self._scale(t_scale_in, s_image) if any(k in w for k in _SCALED_TEACHER_TERMS) else None

        if "affinity_i2t" in w:  # rows: images, softmax over the batch's texts
            terms["affinity_i2t"] = _soft_cross_entropy(s_scale * s_rows_i @ s_cols_t.T,
                                                        t_scale * t_rows_i @ t_cols_t.T)
        if "affinity_t2i" in w:  # rows: texts, softmax over the batch's images
            terms["affinity_t2i"] = _soft_cross_entropy(s_scale * s_rows_t @ s_cols_i.T,
                                                        t_scale * t_rows_t @ t_cols_i.T)
        if "feature" in w:
            project = self.feature_proj if self.feature_proj is not None else (lambda x: x)
            terms["feature"] = ((project(s_rows_i) - t_rows_i).pow(2).sum(dim=1).mean()
                                + (project(s_rows_t) - t_rows_t).pow(2).sum(dim=1).mean())
        # Rows are global samples offset by rank·B_local when each rank keeps only its own rows.
        offset = self.rank * s_image.shape[0] if (self.world_size > 1 and self.local_loss) else 0
        for name, s_rows, s_cols, t_rows, t_cols in (("image_image", s_rows_i, s_cols_i, t_rows_i, t_cols_i),
                                                     ("text_text", s_rows_t, s_cols_t, t_rows_t, t_cols_t)):
            if name in w:
                terms[name] = _soft_cross_entropy(_without_self_pairs(s_scale * s_rows @ s_cols.T, offset),
                                                  _without_self_pairs(t_scale * t_rows @ t_cols.T, offset))
        return terms

    def _check_inputs(self, s_image: Tensor, s_text: Tensor, t_image: Tensor | None, t_text: Tensor | None,
                      s_scale: Tensor | None, t_scale: Tensor | None) -> None:
        def check(name: str, x: Any, dim: int, dim_name: str) -> None:
            if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise TinyCLIPError(f"{name} has shape {shape}; expected [batch, {dim}] ({dim_name} given to "
                                    "DistillationLoss)")

        check("student_image", s_image, self.student_dim, "student_dim")
        check("student_text", s_text, self.student_dim, "student_dim")
        batch = s_image.shape[0]
        if s_text.shape[0] != batch:
            raise TinyCLIPError(f"student_image has {batch} rows but student_text {s_text.shape[0]}; pass pairs")
        fixed = self.cfg.fixed_logit_scale is not None
        if s_scale is None and not fixed and ("contrastive" in self.weights
                                              or any(k in self.weights for k in _SCALED_TEACHER_TERMS)):
            raise TinyCLIPError("student_logit_scale is None; pass the exponentiated scale the model returns")
        if self.cfg.needs_teacher:
            for name, x in (("teacher_image", t_image), ("teacher_text", t_text)):
                if x is None:
                    raise TinyCLIPError(f"{name} is None but the loss terms {sorted(self.weights)} need the teacher")
                check(name, x, self.teacher_dim, "teacher_dim")
                if x.shape[0] != batch:
                    raise TinyCLIPError(f"{name} has {x.shape[0]} rows but the student batch {batch}; pass the "
                                        "teacher features of the same samples")
            if t_scale is None and not fixed and any(k in self.weights for k in _SCALED_TEACHER_TERMS):
                raise TinyCLIPError("teacher_logit_scale is None; pass the teacher's exponentiated scale or set "
                                    "fixed_logit_scale")
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise TinyCLIPError(f"world_size={self.world_size} but torch.distributed is not initialised; call "
                                "init_process_group first (or use world_size=1)")
        if batch * self.world_size < 2 and any(k in self.weights for k in ("image_image", "text_text")):
            raise TinyCLIPError("single-modality affinity needs a global batch of at least 2 samples")
