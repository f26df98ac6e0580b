"""Automatic weight inheritance: learnable hard-concrete masks, sparsity control, physical pruning.

Paper section 3.2 ("automatic inheritance"), with the masks of CoFi/L0 (Louizos et al. 2018) as in the
official code (docs/official_code.md §3), its bugs fixed (the numbers below are that page's §7; docs/deviations.md):

* Masks per tower (vision and text masked independently, parameter budget joint): ``hidden`` (m_embed, one
  gate per residual-stream channel, shared by all layers), ``heads`` (m_head, each head's attention output
  before out_proj), ``mlp`` (m_int, FFN neurons after the activation) and, switchable, whole-layer
  ``attn_layer`` / ``mlp_layer`` gates (on by default; the official scripts left them off).
* Hard-concrete constants of CoFi: stretch (-0.1, 1.1), temperature 2/3, eps 1e-6; log-alpha starts at
  10 (masks open) and is clamped to [ln 0.01, ln 100] after every step, as the official code does.
  Training draws one sample per gate per forward (shared by the batch); eval uses deterministic masks:
  per group (the hidden vector; each layer's heads; each layer's neurons; the layer gates) the
  ``round(sum P(z != 0))`` gates with the largest log-alpha are exactly 1, the rest exactly 0 (CoFi's
  count; the official code kept soft values such as 0.996, bug 7.2).
* Hidden gates and LayerNorm: the gate multiplies the residual stream where the paper says (the embedding,
  the attention output, the FFN output) and every LayerNorm is a *gated* LayerNorm: mean and variance are
  weighted by the gates (``w = z / sum z``) and the output is multiplied by the gates. With binary gates
  this is exactly a LayerNorm over the kept channels, which is what the pruned model computes, so the
  pruned model equals the masked one (tested to 1e-5). With a training sample it is the LayerNorm of
  that sampled sub-network, relaxed smoothly for fractional gates: it is differentiable in the gates and
  needs no host sync (the official code picked a random channel subset with ``torch.where``, passed no
  gradient to the gate and did not gate the output, bug 7.6).
* A sub-layer whose heads (or neurons) are all zero also loses its output bias: the bias is gated by
  ``layer_gate * (1 - prod(1 - gates))``, the probability that the sub-layer survives, so pruning it away
  changes nothing.
* Expected size: remaining parameters under the paper's convention (vision tower complete, text tower
  without the token embedding), counting the LayerNorm entries, biases, embedding / projection rows that
  disappear with pruned dimensions (the official code counted block weights only: a documented
  deviation). Gates are independent, so the expectation of each product is the product of expectations.
  For deterministic masks it equals the pruned model's real parameter count.
* Sparsity control: ``p`` = expected *sparsity* = 1 - E[params] / reference, where the reference is the
  original teacher's size (stage k of the chain is measured against the teacher, not stage k-1);
  ``q(step)`` ramps linearly from the stage's start to its target over ``sparsity_warmup`` steps;
  ``L_sparsity = lambda_1 (p - q) + lambda_2 (p - q)^2`` (paper form, signed; lambdas start at 0). The masks
  descend on it, the lambdas *ascend* in their own optimiser (``maximize=True``; the official code used
  a negative learning rate, bug 7.3). ``official_lagrangian=True`` gives the official one-sided hinge
  ``lambda_1 max(q - p, 0) + lambda_2 max(q - p, 0)^2`` with lambdas starting at 10 (bug 7.4).

Usage (one auto stage; the trainer owns the loop)::

    masked = MaskedCLIP(student, AutoInheritSpec(target_sparsity=0.25))   # open_clip CLIP or PrunedCLIP
    weights_opt = AdamW(masked.weight_parameters(), ...)                   # clip only these (not the L0 params)
    mask_opt = MaskOptimizer(masked)                                       # descent on log-alpha, ascent on lambdas
    for step in range(spec.mask_steps):
        img, txt, scale = masked(images, texts)                            # sampled masks in train mode
        lag, logs = masked.sparsity_loss(step)
        (distill_loss(img, txt, scale, ...) + lag).backward()
        clip_grad_norm_(masked.weight_parameters(), 5.0); weights_opt.step(); mask_opt.step()
    student = masked.prune()                                               # a smaller dense PrunedCLIP

A pruned student is masked again in the next stage (``MaskedCLIP(student, spec)``); its config carries the
original reference size. Units pruned in an earlier stage are physically gone and cannot come back (the
official code re-expanded them with log-alpha -10, weights zero).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import TinyCLIPError
from ..pruned import (
    PrunedCLIP,
    PrunedConfig,
    TowerConfig,
    config_param_counts,
    param_counts,
    params_per_hidden_dim,
    to_pruned,
)

# Hard-concrete constants (Louizos et al.; CoFi; official l0module.py).
HC_LOW, HC_HIGH = -0.1, 1.1
HC_TEMPERATURE = 2.0 / 3.0
HC_EPS = 1e-6
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
# Masks start open: log-alpha 10 (P(z != 0) = 0.99999, every deterministic mask is 1, so the masked model is
# the student); the clamp after the first optimiser step brings it to ln 100 (P = 0.998), as in the official code.
INIT_LOG_ALPHA = 10.0
# P(z != 0) = sigmoid(log_alpha - temperature * log(-low / high))
_NONZERO_SHIFT = -HC_TEMPERATURE * math.log(-HC_LOW / HC_HIGH)
OFFICIAL_LAMBDA_INIT = 10.0
TOWERS = ("vision", "text")


def hard_concrete_sample(log_alpha: torch.Tensor) -> torch.Tensor:
    """One stretched-and-clamped hard-concrete sample per entry (exact zeros and ones have mass)."""
    u = torch.empty_like(log_alpha).uniform_(HC_EPS, 1 - HC_EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / HC_TEMPERATURE)
    return (s * (HC_HIGH - HC_LOW) + HC_LOW).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z != 0) of each hard-concrete gate (differentiable in log-alpha)."""
    return torch.sigmoid(log_alpha + _NONZERO_SHIFT)


# ----------------------------------------------------------------------------------------------------------
# specification


@dataclass
class AutoInheritSpec:
    """One auto-inheritance stage (plain data; recipes give it as a dict, see :meth:`from_dict`).

    Sparsities are fractions of the reference size removed: 0.25 = a student of 75% of the teacher.
    Paper-scale stages (official scripts): 0 -> 0.25 / 0.25 -> 0.5 / 0.5 -> 0.75 with mask phases of
    3000 / 5000 / 8000 steps and a target warm-up of 1000 steps; mask and lambda learning rates 0.02.
    """

    target_sparsity: float
    start_sparsity: float = 0.0
    sparsity_warmup: int = 1000
    mask_steps: int = 3000
    mask_lr: float = 0.02
    lagrangian_lr: float = 0.02
    prune_layers: bool = True  # whole-layer MHA / FFN gates
    towers: tuple[str, ...] = TOWERS
    reference_params: int | None = None  # original teacher size; None: taken from the student's config
    official_lagrangian: bool = False  # one-sided hinge, lambdas start at 10 (official code)
    # starting value of lambda_1 and lambda_2; None: 0 (CoFi, this code's default) or 10 (official_lagrangian).
    # The paper's text starts them at 0.01 (recipes/paper_auto_vit.yaml)
    lambda_init: float | None = None
    # deterministic masks: "target" keeps the gates with the largest log-alpha, ranked jointly over both towers,
    # until the pruned size reaches the target; "cofi" keeps round(sum P(z != 0)) gates per group (official)
    deterministic: str = "target"

    def __post_init__(self) -> None:
        self.towers = tuple(self.towers)
        for name in ("target_sparsity", "start_sparsity"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise TinyCLIPError(f"auto inheritance: {name}={value!r} must be in [0, 1) (fraction removed)")
        if self.start_sparsity > self.target_sparsity:
            raise TinyCLIPError("auto inheritance: start_sparsity must not exceed target_sparsity")
        if not self.towers or not set(self.towers) <= set(TOWERS) or len(set(self.towers)) != len(self.towers):
            raise TinyCLIPError(f"auto inheritance: towers={self.towers!r} must be a non-empty subset of {TOWERS}")
        for name in ("sparsity_warmup", "mask_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "sparsity_warmup" else 1):
                raise TinyCLIPError(f"auto inheritance: {name}={value!r} must be a non-negative step count")
        for name in ("mask_lr", "lagrangian_lr"):
            if not getattr(self, name) > 0:
                raise TinyCLIPError(f"auto inheritance: {name} must be positive (the ascent is explicit)")
        if self.deterministic not in ("target", "cofi"):
            raise TinyCLIPError(f"auto inheritance: deterministic={self.deterministic!r} must be 'target' or 'cofi'")
        if self.reference_params is not None and self.reference_params < 1:
            raise TinyCLIPError("auto inheritance: reference_params must be a positive parameter count")
        if self.lambda_init is not None and not (isinstance(self.lambda_init, (int, float))
                                                 and math.isfinite(self.lambda_init)):
            raise TinyCLIPError(f"auto inheritance: lambda_init={self.lambda_init!r} must be a finite number or null")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoInheritSpec":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise TinyCLIPError(f"auto inheritance: unknown settings {unknown}; known: {[f.name for f in fields(cls)]}")
        if "target_sparsity" not in data:
            raise TinyCLIPError("auto inheritance: target_sparsity is required")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "towers": list(self.towers)}
        if out["lambda_init"] is None:   # unset: the run identities of recipes written before it existed stay
            del out["lambda_init"]
        return out

    def target_at(self, step: int) -> float:
        """Target sparsity q(step): linear ramp from start to target over ``sparsity_warmup`` steps."""
        frac = min(1.0, step / self.sparsity_warmup) if self.sparsity_warmup > 0 else 1.0
        return self.start_sparsity + (self.target_sparsity - self.start_sparsity) * frac


# ----------------------------------------------------------------------------------------------------------
# gates of one tower


@dataclass
class TowerGates:
    """Gate values of one tower: samples, probabilities P(z != 0), or deterministic 0/1 masks.

    Per-layer rows are padded with zeros to the widest layer; rows exist only for layers whose sub-layer
    is present in the model being masked (``TowerMasks.attn_layers`` / ``mlp_layers``).
    """

    hidden: torch.Tensor  # [width]
    heads: torch.Tensor  # [n_attn_layers, max_heads]
    mlp: torch.Tensor  # [n_mlp_layers, max_neurons]
    attn_layer: torch.Tensor  # [n_attn_layers]
    mlp_layer: torch.Tensor  # [n_mlp_layers]

    def map(self, fn) -> "TowerGates":
        return TowerGates(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def layer_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Effective head gates [La, H] and neuron gates [Lf, F] (times the layer gate), and the survival of
        each sub-layer [La], [Lf]: layer gate x (1 - prod(1 - gates)), i.e. P(at least one unit is kept).
        A sub-layer's output bias and LayerNorm live exactly as long as the sub-layer survives."""
        heads = self.heads * self.attn_layer[:, None]
        neurons = self.mlp * self.mlp_layer[:, None]
        attn_alive = self.attn_layer * (1 - torch.prod(1 - self.heads, dim=1))
        mlp_alive = self.mlp_layer * (1 - torch.prod(1 - self.mlp, dim=1))
        return heads, attn_alive, neurons, mlp_alive


def _present_layers(sizes: list[int]) -> list[int]:
    """Indices of the layers whose sub-layer exists (gates and gate rows exist only for those)."""
    return [i for i, size in enumerate(sizes) if size]


class TowerMasks(nn.Module):
    """The log-alpha of every gate of one tower in one flat parameter (one sampling op per step).

    Layout: [hidden | heads of each attention layer | neurons of each FFN layer | attn-layer | mlp-layer].
    """

    def __init__(self, cfg: TowerConfig, layer_gates: bool = True, init_log_alpha: float = INIT_LOG_ALPHA):
        super().__init__()
        self.attn_layers, self.mlp_layers = _present_layers(cfg.heads), _present_layers(cfg.mlp)
        self.layer_gates = layer_gates
        self.width = cfg.width
        sizes = [("hidden", None, cfg.width)]
        sizes += [("heads", i, cfg.heads[i]) for i in self.attn_layers]
        sizes += [("mlp", i, cfg.mlp[i]) for i in self.mlp_layers]
        if layer_gates:
            sizes += [("attn_layer", None, len(self.attn_layers)), ("mlp_layer", None, len(self.mlp_layers))]
        self.groups: list[tuple[str, int | None, int, int]] = []  # (kind, layer, start, stop)
        start = 0
        for kind, layer, size in sizes:
            self.groups.append((kind, layer, start, start + size))
            start += size
        self.numel = start
        self.log_alpha = nn.Parameter(torch.full((start,), float(init_log_alpha)))
        self.register_buffer("head_index", self._pad_index("heads"), persistent=False)
        self.register_buffer("mlp_index", self._pad_index("mlp"), persistent=False)

    def _pad_index(self, kind: str) -> torch.Tensor:
        rows = [(start, stop) for k, _, start, stop in self.groups if k == kind]
        width = max((stop - start for start, stop in rows), default=0)
        index = torch.full((len(rows), width), self.numel, dtype=torch.long)  # numel -> the appended zero
        for r, (start, stop) in enumerate(rows):
            index[r, : stop - start] = torch.arange(start, stop)
        return index

    def group_slice(self, kind: str, layer: int | None = None) -> slice:
        for k, l, start, stop in self.groups:
            if k == kind and l == layer:
                return slice(start, stop)
        raise KeyError((kind, layer))

    def views(self, flat: torch.Tensor | None = None) -> Iterator[tuple[str, int | None, torch.Tensor]]:
        """(kind, layer, view) of every group of ``flat`` (default: log-alpha) -- for setting or plotting."""
        flat = self.log_alpha if flat is None else flat
        for kind, layer, start, stop in self.groups:
            yield kind, layer, flat[start:stop]

    def sample(self) -> torch.Tensor:
        return hard_concrete_sample(self.log_alpha)

    def probabilities(self) -> torch.Tensor:
        return prob_nonzero(self.log_alpha)

    @torch.no_grad()
    def deterministic(self) -> torch.Tensor:
        """0/1 masks: in each group the round(sum P(z != 0)) gates with the largest log-alpha (>= 1 hidden)."""
        prob = self.probabilities()
        expected = torch.stack([prob[start:stop].sum() for _, _, start, stop in self.groups]).round().tolist()
        out = torch.zeros_like(prob)
        for (kind, _, start, stop), keep in zip(self.groups, expected):
            keep = max(int(keep), 1) if kind == "hidden" else int(keep)
            if keep:
                out[start + self.log_alpha[start:stop].topk(keep).indices] = 1.0
        return out

    def gates(self, flat: torch.Tensor) -> TowerGates:
        """Split a flat gate vector (sample, probabilities or 0/1) into per-kind, padded tensors."""
        padded = torch.cat([flat, flat.new_zeros(1)])
        if self.layer_gates:
            attn_layer = flat[self.group_slice("attn_layer")]
            mlp_layer = flat[self.group_slice("mlp_layer")]
        else:
            attn_layer = flat.new_ones(len(self.attn_layers))
            mlp_layer = flat.new_ones(len(self.mlp_layers))
        return TowerGates(
            hidden=flat[: self.width], heads=padded[self.head_index], mlp=padded[self.mlp_index],
            attn_layer=attn_layer, mlp_layer=mlp_layer,
        )

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def expected_tower_params(cfg: TowerConfig, embed_dim: int, gates: TowerGates) -> torch.Tensor:
    """Remaining parameters of one tower (paper convention) given gate probabilities or 0/1 masks.

    Terms: hidden-sized entries outside the blocks; per attention layer in_proj (3 hd h d' + 3 hd h),
    out_proj (hd h d') and, if the sub-layer survives, its bias and ln_1 (3 d'); per FFN layer c_fc and
    c_proj (2 f d' + f) and, if it survives, c_proj bias and ln_2 (3 d'). d' = kept hidden, h = kept heads
    (times the layer gate), f = kept neurons. Computed in float64 (exact integers for 0/1 masks).
    """
    g = gates.map(lambda t: t.double())
    hd = cfg.head_dim
    hidden = g.hidden.sum()
    heads, attn_alive, neurons, mlp_alive = (t.sum() for t in g.layer_terms())
    return (
        hidden * params_per_hidden_dim(cfg, embed_dim)
        + (4 * hd * hidden + 3 * hd) * heads
        + 3 * hidden * attn_alive
        + (2 * hidden + 1) * neurons
        + 3 * hidden * mlp_alive
    )


# ----------------------------------------------------------------------------------------------------------
# masked forward (written against PrunedCLIP's modules; the plain forward lives in tinyclip.pruned)


@dataclass
class _GatePlan:
    """Gate tensors of one tower prepared once per forward and folded into weights layer by layer.

    Per-layer entries are separate tensors (``unbind``), so the backward of each layer's slice does not
    materialise a gradient of the whole stack.
    """

    hidden: torch.Tensor  # [d]
    attn_cols: list[torch.Tensor]  # per attention layer [max_heads*hd]: out_proj input columns (head gates)
    attn_bias: list[torch.Tensor]  # per attention layer [d]: out_proj bias (hidden x sub-layer survival)
    mlp_cols: list[torch.Tensor]  # per FFN layer [max_neurons]: c_proj input columns (neuron gates)
    mlp_bias: list[torch.Tensor]  # per FFN layer [d]


def _plan(gates: TowerGates, head_dim: int) -> _GatePlan:
    z = gates.hidden
    heads, attn_alive, neurons, mlp_alive = gates.layer_terms()
    return _GatePlan(
        hidden=z,
        attn_cols=list(heads.repeat_interleave(head_dim, dim=1).unbind(0)),
        attn_bias=list((attn_alive[:, None] * z).unbind(0)),
        mlp_cols=list(neurons.unbind(0)),
        mlp_bias=list((mlp_alive[:, None] * z).unbind(0)),
    )


class _GatedLayerNorm(torch.autograd.Function):
    """Gated LayerNorm in one autograd node (a hand-written backward: fewer passes and ops than autograd's).

    With gates h, w = h / sum(h): mu = x @ w, var = (x - mu)^2 @ w, xhat = (x - mu) / sqrt(var + eps),
    y = xhat * (gamma h) + beta h. Backward, with gh = gy * gamma h, A = sum(gh), B = sum(gh * xhat) per row:
    dx = r (gh - w (A + xhat B)); dw = -sum_rows(r A x + xhat^2 B / 2), and dh = (dw - dw.w) / sum(h)
    + sum_rows(gy xhat) gamma + sum_rows(gy) beta; dgamma = sum_rows(gy xhat) h; dbeta = sum_rows(gy) h.
    """

    @staticmethod
    def forward(ctx, x, hidden, gamma, beta, eps: float):
        with torch.autocast(x.device.type, enabled=False):
            total = hidden.sum().clamp_min(HC_EPS)
            w = hidden / total
            mean = x @ w
            centred = x - mean[..., None]
            rstd = torch.rsqrt(centred.square() @ w + eps)
            xhat = centred * rstd[..., None]
            ctx.save_for_backward(x, xhat, rstd, hidden, w, total, gamma, beta)
            return torch.addcmul(beta * hidden, xhat, gamma * hidden)

    @staticmethod
    def backward(ctx, grad):
        x, xhat, rstd, hidden, w, total, gamma, beta = ctx.saved_tensors
        need_x, need_h, need_gamma, need_beta, _ = ctx.needs_input_grad
        grad_x = grad_h = grad_gamma = grad_beta = None
        with torch.autocast(grad.device.type, enabled=False):
            rows = grad.reshape(-1, grad.shape[-1])
            sum_gy_xhat = (rows * xhat.reshape(rows.shape)).sum(0)
            sum_gy = rows.sum(0)
            if need_x or need_h:
                grad_xhat = grad * (gamma * hidden)
                a = grad_xhat.sum(-1, keepdim=True)
                b = (grad_xhat * xhat).sum(-1, keepdim=True)
                if need_x:
                    grad_x = torch.addcmul(grad_xhat, torch.addcmul(a, xhat, b), w, value=-1) * rstd[..., None]
                if need_h:
                    flat_x, flat_xhat = x.reshape(rows.shape), xhat.reshape(rows.shape)
                    grad_w = -(flat_x.T @ (rstd.reshape(-1) * a.reshape(-1)) + 0.5 * (flat_xhat.square().T @ b.reshape(-1)))
                    grad_h = (grad_w - grad_w @ w) / total + sum_gy_xhat * gamma + sum_gy * beta
            if need_gamma:
                grad_gamma = sum_gy_xhat * hidden
            if need_beta:
                grad_beta = sum_gy * hidden
        return grad_x, grad_h, grad_gamma, grad_beta, None


def gated_layer_norm(x: torch.Tensor, ln: nn.LayerNorm, hidden: torch.Tensor) -> torch.Tensor:
    """LayerNorm whose statistics are weighted by the hidden gates and whose output is gated.

    For 0/1 gates: LayerNorm over the kept channels, zero elsewhere. Computed in float32 (like open_clip's
    LayerNorm under autocast).
    """
    if x.dtype == torch.float32:
        return _GatedLayerNorm.apply(x, hidden, ln.weight, ln.bias, ln.eps)
    return _GatedLayerNorm.apply(x.float(), hidden.float(), ln.weight.float(), ln.bias.float(), ln.eps).to(x.dtype)


def _gated_linear(x: torch.Tensor, linear: nn.Linear, hidden: torch.Tensor, cols: torch.Tensor, bias_gate: torch.Tensor):
    """``linear`` with input columns gated by ``cols`` and output rows by ``hidden`` (folded into the weight)."""
    if cols.shape[0] != linear.in_features:
        cols = cols[: linear.in_features]  # rows are padded to the widest layer
    return F.linear(x, linear.weight * torch.outer(hidden, cols), linear.bias * bias_gate)


def _masked_block(block, x: torch.Tensor, plan: _GatePlan, attn_row: int, mlp_row: int, causal: bool):
    if block.attn is not None:
        h = block.attn.attend(gated_layer_norm(x, block.ln_1, plan.hidden), causal)
        x = x + _gated_linear(h, block.attn.out_proj, plan.hidden, plan.attn_cols[attn_row], plan.attn_bias[attn_row])
    if block.mlp is not None:
        h = block.mlp.gelu(block.mlp.c_fc(gated_layer_norm(x, block.ln_2, plan.hidden)))
        x = x + _gated_linear(h, block.mlp.c_proj, plan.hidden, plan.mlp_cols[mlp_row], plan.mlp_bias[mlp_row])
    return x


def _masked_blocks(tower, x: torch.Tensor, plan: _GatePlan) -> torch.Tensor:
    attn_row = mlp_row = 0
    use_checkpoint = tower.grad_checkpointing and tower.training and torch.is_grad_enabled()
    for block in tower.blocks:
        if use_checkpoint:
            x = checkpoint(_masked_block, block, x, plan, attn_row, mlp_row, tower.causal, use_reentrant=False)
        else:
            x = _masked_block(block, x, plan, attn_row, mlp_row, tower.causal)
        attn_row += block.attn is not None
        mlp_row += block.mlp is not None
    return x


def _masked_image(visual, image: torch.Tensor, gates: TowerGates, head_dim: int) -> torch.Tensor:
    plan = _plan(gates, head_dim)
    x = gated_layer_norm(visual.embed(image) * plan.hidden, visual.ln_pre, plan.hidden)
    x = visual.pool(_masked_blocks(visual, x, plan))
    return gated_layer_norm(x, visual.ln_post, plan.hidden) @ visual.proj


def _masked_text(text_tower, tokens: torch.Tensor, gates: TowerGates, head_dim: int) -> torch.Tensor:
    plan = _plan(gates, head_dim)
    x = _masked_blocks(text_tower, text_tower.embed(tokens) * plan.hidden, plan)
    x = text_tower.pool(x, tokens)
    return gated_layer_norm(x, text_tower.ln_final, plan.hidden) @ text_tower.text_projection


# ----------------------------------------------------------------------------------------------------------
# the masked student


class MaskedCLIP(nn.Module):
    """A student under learnable masks: same interface as open_clip's CLIP, plus the L0 machinery.

    ``train()`` mode samples the gates (one sample per tower per forward); ``eval()`` applies the
    deterministic 0/1 masks, with which the outputs equal those of :meth:`prune`'s model.
    Parameter groups: :meth:`weight_parameters` (the student; the only ones to clip),
    :meth:`mask_parameters` (log-alpha, descent), :meth:`lagrangian_parameters` (lambda_1, lambda_2, ascent).
    """

    def __init__(self, model: nn.Module, spec: AutoInheritSpec):
        super().__init__()
        self.model: PrunedCLIP = to_pruned(model)
        self.spec = spec
        config = self.model.config
        self.reference_params = int(spec.reference_params or config.reference_params or param_counts(self.model)["total"])
        device = self.model.logit_scale.device
        self.masks = nn.ModuleDict(
            {t: TowerMasks(config.towers()[t], spec.prune_layers) for t in spec.towers}
        ).to(device)
        lambda_init = spec.lambda_init if spec.lambda_init is not None else \
            OFFICIAL_LAMBDA_INIT if spec.official_lagrangian else 0.0
        self.lambda_1 = nn.Parameter(torch.tensor(lambda_init, device=device))
        self.lambda_2 = nn.Parameter(torch.tensor(lambda_init, device=device))
        self._fixed_params = param_counts(self.model)  # towers that are not masked keep their size

    # -- CLIP interface ------------------------------------------------------------------------------------
    @property
    def config(self) -> PrunedConfig:
        return self.model.config

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def gates(self, tower: str, mode: str | None = None) -> TowerGates | None:
        """Gates of a tower: ``sample`` / ``deterministic`` / ``prob`` (default: by train/eval mode)."""
        if tower not in self.masks:
            return None
        masks = self.masks[tower]
        mode = mode or ("sample" if self.training else "deterministic")
        if mode == "deterministic":
            return masks.gates(self.deterministic_masks()[tower])
        flat = {"sample": masks.sample, "cofi": masks.deterministic, "prob": masks.probabilities}[mode]()
        return masks.gates(flat)

    @torch.no_grad()
    def deterministic_masks(self) -> dict[str, torch.Tensor]:
        """The 0/1 masks that eval mode and :meth:`prune` use, per tower (flat, as :class:`TowerMasks` lays out).

        ``spec.deterministic == "cofi"``: per group the round(sum P(z != 0)) gates with the largest log-alpha
        (CoFi / official); the size then follows the learned expectation only as closely as the mask phase
        converged. ``"target"`` (default): every gate of both towers ranked by log-alpha, and the top k kept
        (each tower's best hidden channel always), k the count whose pruned size is closest to the target; the
        size is monotone in k, so a binary search finds it. The learned ranking decides *what* is pruned, the
        stage's target *how much*: short mask phases (the mini recipes) end with the expectation near the
        target but rounded masks far from it."""
        if self.spec.deterministic == "cofi":
            return {t: m.deterministic() for t, m in self.masks.items()}
        towers = list(self.masks)
        alphas = torch.cat([self.masks[t].log_alpha.detach() for t in towers])
        sizes = [self.masks[t].numel for t in towers]
        starts = [sum(sizes[:i]) for i in range(len(towers))]
        order = torch.argsort(alphas, descending=True, stable=True)
        forced = torch.zeros_like(alphas)
        for t, start in zip(towers, starts):  # a tower keeps at least its best hidden channel
            forced[start + int(self.masks[t].log_alpha[: self.masks[t].width].argmax())] = 1.0
        fixed = sum(float(self._fixed_params[t]) for t in self.config.towers() if t not in self.masks)
        towers_cfg = self.config.towers()

        def split(k: int) -> dict[str, torch.Tensor]:
            flat = forced.clone()
            flat[order[:k]] = 1.0
            return {t: flat[start:start + n] for t, start, n in zip(towers, starts, sizes)}

        def size(k: int) -> float:
            masks = split(k)
            return fixed + sum(float(expected_tower_params(towers_cfg[t], self.config.embed_dim,
                                                           self.masks[t].gates(masks[t]))) for t in towers)

        target = (1 - self.spec.target_sparsity) * self.reference_params
        lo, hi = 0, len(alphas)  # the smallest k with size(k) >= target (or all gates)
        while lo < hi:
            mid = (lo + hi) // 2
            if size(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        if lo > 0 and abs(size(lo - 1) - target) < abs(size(lo) - target):
            lo -= 1
        return split(lo)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        gates = self.gates("vision")
        if gates is None:
            features = self.model.visual(image)
        else:
            features = _masked_image(self.model.visual, image, gates, self.config.vision.head_dim)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        gates = self.gates("text")
        if gates is None:
            features = self.model.text(text)
        else:
            features = _masked_text(self.model.text, text, gates, self.config.text.head_dim)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.model.logit_scale.exp()

    # -- parameter groups ----------------------------------------------------------------------------------
    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def mask_parameters(self) -> list[nn.Parameter]:
        return [m.log_alpha for m in self.masks.values()]

    def lagrangian_parameters(self) -> list[nn.Parameter]:
        return [self.lambda_1, self.lambda_2]

    def clamp_log_alpha_(self) -> None:
        for m in self.masks.values():
            m.clamp_()

    # -- size and sparsity ---------------------------------------------------------------------------------
    def _tower_params(self, mode: str) -> dict[str, torch.Tensor]:
        out = {}
        for tower, cfg in self.config.towers().items():
            gates = self.gates(tower, mode)
            if gates is None:
                fixed = float(self._fixed_params[tower])
                out[tower] = torch.tensor(fixed, dtype=torch.float64, device=self.lambda_1.device)
            else:
                out[tower] = expected_tower_params(cfg, self.config.embed_dim, gates)
        return out

    def expected_params_by_tower(self) -> dict[str, torch.Tensor]:
        """Expected remaining parameters per tower from P(z != 0) (differentiable, float64)."""
        return self._tower_params("prob")

    def expected_params(self) -> torch.Tensor:
        counts = self.expected_params_by_tower()
        return counts["vision"] + counts["text"]

    def expected_sparsity(self) -> torch.Tensor:
        """p = 1 - E[remaining params] / reference (joint over both towers)."""
        return 1 - self.expected_params() / self.reference_params

    def deterministic_params(self, mode: str = "deterministic") -> dict[str, int]:
        """Parameter counts of the model :meth:`prune` would return (same formula, 0/1 masks); ``mode="cofi"``:
        with CoFi's per-group rounding instead (logged next to it: how far the learned masks are from the
        target on their own)."""
        counts = {k: int(round(float(v))) for k, v in self._tower_params(mode).items()}
        counts["total"] = counts["vision"] + counts["text"]
        return counts

    def sparsity_loss(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Lagrangian term at ``step`` of the stage, and detached 0-d tensors to log (no host sync here)."""
        by_tower = self.expected_params_by_tower()
        p = 1 - (by_tower["vision"] + by_tower["text"]) / self.reference_params
        q = self.spec.target_at(step)
        lam1, lam2 = self.lambda_1.double(), self.lambda_2.double()
        gap = (q - p).clamp_min(0) if self.spec.official_lagrangian else p - q
        loss = (lam1 * gap + lam2 * gap * gap).float()
        logs = {
            "expected_sparsity": p.detach(), "target_sparsity": torch.tensor(q, dtype=torch.float64),
            "lagrangian_loss": loss.detach(), "lambda_1": self.lambda_1.detach(), "lambda_2": self.lambda_2.detach(),
            **{f"{t}_expected_params": v.detach() for t, v in by_tower.items()},
        }
        return loss, logs

    # -- pruning -------------------------------------------------------------------------------------------
    def prune_plan(self) -> tuple[PrunedConfig, dict[str, TowerKeep]]:
        gates = {t: self.gates(t, "deterministic") for t in self.masks}
        config, keep = prune_plan(self.config, gates)
        config.reference_params = self.reference_params
        return config, keep

    def prune_config(self) -> PrunedConfig:
        """The architecture :meth:`prune` would produce (for figures during the mask phase)."""
        return self.prune_plan()[0]

    @torch.no_grad()
    def prune(self) -> PrunedCLIP:
        """Deterministic masks -> a physically smaller dense PrunedCLIP (outputs equal the eval-mode model)."""
        config, keep = self.prune_plan()
        return slice_model(self.model, config, keep)


# ----------------------------------------------------------------------------------------------------------
# pruning: gates -> architecture -> sliced weights


@dataclass
class TowerKeep:
    """Indices kept in one tower: hidden channels, and per layer the heads / FFN neurons (None: removed)."""

    hidden: torch.Tensor
    heads: list[torch.Tensor | None]
    mlp: list[torch.Tensor | None]


def prune_plan(config: PrunedConfig, gates: dict[str, TowerGates]) -> tuple[PrunedConfig, dict[str, TowerKeep]]:
    """The pruned architecture and kept indices for 0/1 gates of some towers (others are kept whole).

    A pure function of the config and the gates (laid out as :class:`TowerMasks` lays them out for that
    config), so it also serves meta-device models.
    """
    new = PrunedConfig.from_dict(config.to_dict())
    keep: dict[str, TowerKeep] = {}
    for tower, cfg in config.towers().items():
        new_cfg = new.towers()[tower]
        if tower not in gates:
            keep[tower] = TowerKeep(
                hidden=torch.arange(cfg.width),
                heads=[torch.arange(h) if h else None for h in cfg.heads],
                mlp=[torch.arange(f) if f else None for f in cfg.mlp],
            )
            continue
        g = gates[tower].map(lambda t: t.detach().cpu() > 0.5)
        hidden = torch.nonzero(g.hidden).flatten()
        if hidden.numel() == 0:
            raise TinyCLIPError(f"pruning would remove every hidden channel of the {tower} tower; lower the sparsity")
        heads: list[torch.Tensor | None] = [None] * cfg.layers
        mlp: list[torch.Tensor | None] = [None] * cfg.layers
        for row, layer in enumerate(_present_layers(cfg.heads)):
            kept = torch.nonzero(g.heads[row, : cfg.heads[layer]] & g.attn_layer[row]).flatten()
            heads[layer] = kept if kept.numel() else None
        for row, layer in enumerate(_present_layers(cfg.mlp)):
            kept = torch.nonzero(g.mlp[row, : cfg.mlp[layer]] & g.mlp_layer[row]).flatten()
            mlp[layer] = kept if kept.numel() else None
        keep[tower] = TowerKeep(hidden=hidden, heads=heads, mlp=mlp)
        new_cfg.width = int(hidden.numel())
        new_cfg.heads = [0 if k is None else int(k.numel()) for k in heads]
        new_cfg.mlp = [0 if k is None else int(k.numel()) for k in mlp]
    new.validate()
    return new, keep


def _sliced_state(model: PrunedCLIP, keep: dict[str, TowerKeep]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"logit_scale": model.logit_scale}
    for tower_name, tower in (("visual", model.visual), ("text", model.text)):
        k = keep["vision" if tower_name == "visual" else "text"]
        h = k.hidden.to(model.logit_scale.device)
        p = tower_name + "."
        if tower_name == "visual":
            out.update({
                p + "conv1.weight": tower.conv1.weight[h], p + "class_embedding": tower.class_embedding[h],
                p + "positional_embedding": tower.positional_embedding[:, h], p + "proj": tower.proj[h],
            })
            lns = ("ln_pre", "ln_post")
        else:
            out.update({
                p + "token_embedding.weight": tower.token_embedding.weight[:, h],
                p + "positional_embedding": tower.positional_embedding[:, h],
                p + "text_projection": tower.text_projection[h],
            })
            lns = ("ln_final",)
        for name in lns:
            ln = getattr(tower, name)
            out[f"{p}{name}.weight"], out[f"{p}{name}.bias"] = ln.weight[h], ln.bias[h]
        for i, block in enumerate(tower.blocks):
            b = f"{p}blocks.{i}."
            heads, neurons = k.heads[i], k.mlp[i]
            if heads is not None:
                attn, heads = block.attn, heads.to(h.device)
                n_in = attn.in_proj.in_features
                out.update({
                    b + "ln_1.weight": block.ln_1.weight[h], b + "ln_1.bias": block.ln_1.bias[h],
                    b + "attn.in_proj.weight": attn.in_proj.weight.view(3, attn.heads, attn.head_dim, n_in)[:, heads][..., h]
                    .reshape(-1, h.numel()),
                    b + "attn.in_proj.bias": attn.in_proj.bias.view(3, attn.heads, attn.head_dim)[:, heads].reshape(-1),
                    b + "attn.out_proj.weight": attn.out_proj.weight.view(n_in, attn.heads, attn.head_dim)[h][:, heads]
                    .reshape(h.numel(), -1),
                    b + "attn.out_proj.bias": attn.out_proj.bias[h],
                })
            if neurons is not None:
                mlp, neurons = block.mlp, neurons.to(h.device)
                out.update({
                    b + "ln_2.weight": block.ln_2.weight[h], b + "ln_2.bias": block.ln_2.bias[h],
                    b + "mlp.c_fc.weight": mlp.c_fc.weight[neurons][:, h], b + "mlp.c_fc.bias": mlp.c_fc.bias[neurons],
                    b + "mlp.c_proj.weight": mlp.c_proj.weight[h][:, neurons], b + "mlp.c_proj.bias": mlp.c_proj.bias[h],
                })
    return {key: t.detach().clone().contiguous() for key, t in out.items()}


def slice_model(model: PrunedCLIP, config: PrunedConfig, keep: dict[str, TowerKeep]) -> PrunedCLIP:
    """A new PrunedCLIP of ``config`` holding ``model``'s weights at the ``keep`` indices (no rescaling)."""
    state = _sliced_state(model, keep)
    with torch.device("meta"):
        pruned = PrunedCLIP(config)
    pruned.load_state_dict(state, strict=True, assign=True)
    pruned.set_grad_checkpointing(model.visual.grad_checkpointing)
    return pruned


# ----------------------------------------------------------------------------------------------------------
# optimisation of the masks and the multipliers


class MaskOptimizer:
    """Descent on the log-alphas and explicit ascent on (lambda_1, lambda_2), then the log-alpha clamp.

    Both are AdamW without weight decay, betas (0.9, 0.999) as in the official L0 optimiser; the ascent uses
    ``maximize=True`` instead of a negative learning rate. With AMP, pass the GradScaler to :meth:`step`
    (it unscales and skips on inf like the weight optimiser); ``optimizers`` lists both for ``unscale_``.
    """

    def __init__(self, masked: MaskedCLIP, spec: AutoInheritSpec | None = None):
        spec = spec or masked.spec
        self.masked = masked
        self.descent = torch.optim.AdamW(masked.mask_parameters(), lr=spec.mask_lr, weight_decay=0.0)
        self.ascent = torch.optim.AdamW(
            masked.lagrangian_parameters(), lr=spec.lagrangian_lr, weight_decay=0.0, maximize=True
        )
        self.optimizers = [self.descent, self.ascent]

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self, scaler: "torch.amp.GradScaler | None" = None) -> None:
        for opt in self.optimizers:
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
        self.masked.clamp_log_alpha_()

    def state_dict(self) -> dict[str, Any]:
        return {"descent": self.descent.state_dict(), "ascent": self.ascent.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.descent.load_state_dict(state["descent"])
        self.ascent.load_state_dict(state["ascent"])


# ----------------------------------------------------------------------------------------------------------
# a deterministic stand-in for learned masks: the shapes of the paper's auto chain without training


# The vision/text split the official masks learned, as fractions of each tower's original size after each stage
# of the ViT-B/32 auto chain (docs/official_code.md §4, docs/sources.md §4): stage target sparsity -> (vision, text).
OFFICIAL_AUTO_SPLIT = {0.25: (0.72, 0.81), 0.50: (0.51, 0.47), 0.75: (0.25, 0.26)}


def uniform_gates(masks: TowerMasks, ratio: float) -> TowerGates:
    """0/1 gates keeping the first ``round(ratio * n)`` hidden channels, heads and FFN neurons of every layer
    (at least one of each) and every whole layer."""
    flat = torch.zeros(masks.numel)
    for kind, _, view in masks.views(flat):
        keep = len(view) if kind.endswith("_layer") else max(1, round(ratio * len(view)))
        view[:keep] = 1.0
    return masks.gates(flat)


def allocate_uniform(cfg: TowerConfig, embed_dim: int, target_params: float) -> TowerGates:
    """The uniform keep ratio whose pruned tower comes closest to ``target_params`` (bisection on the ratio)."""
    masks = TowerMasks(cfg)
    lo, hi = 0.0, 1.0
    for _ in range(16):  # ratio resolution 1.5e-5, finer than one hidden channel in 768
        mid = (lo + hi) / 2
        if expected_tower_params(cfg, embed_dim, uniform_gates(masks, mid)).item() <= target_params:
            lo = mid
        else:
            hi = mid
    candidates = [uniform_gates(masks, r) for r in (lo, hi)]
    return min(candidates, key=lambda g: abs(expected_tower_params(cfg, embed_dim, g).item() - target_params))


def official_split_chain(teacher: nn.Module, split: dict[float, tuple[float, float]] | None = None
                         ) -> list[tuple[float, PrunedConfig]]:
    """Architectures of a multi-stage auto chain whose per-tower sizes follow ``split`` (default: the split the
    official ViT-B/32 masks learned), each stage pruning the previous stage's architecture. Shapes only: use it
    for parameter and MAC counts of the paper's auto rows, not as a substitute for learned masks."""
    config = to_pruned(teacher).config
    original = config_param_counts(config)
    chain = []
    for sparsity, (vision_share, text_share) in sorted((split or OFFICIAL_AUTO_SPLIT).items()):
        gates = {"vision": allocate_uniform(config.vision, config.embed_dim, vision_share * original["vision"]),
                 "text": allocate_uniform(config.text, config.embed_dim, text_share * original["text"])}
        config, _ = prune_plan(config, gates)
        chain.append((sparsity, config))
    return chain
