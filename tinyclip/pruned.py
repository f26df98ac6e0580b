"""Dense CLIP students with irregular per-layer widths: the output of automatic weight inheritance.

Paper section 3.2 ("automatic inheritance"): learned masks remove attention heads, FFN neurons, hidden
(embedding) dimensions and, optionally, whole MHA / FFN sub-layers. The resulting student has a different
head count and FFN width in every layer and one reduced hidden width per tower, which open_clip configs
cannot express (docs/design.md §3). This module is that student:

* :class:`PrunedConfig` -- the architecture as plain data (JSON): per tower the hidden width, the head
  width, and per layer the number of heads and FFN neurons (0 means the sub-layer is gone).
* :class:`PrunedCLIP` -- an ``nn.Module`` with open_clip's ``encode_image(x, normalize=False)``,
  ``encode_text(tokens, normalize=False)`` and ``forward(image, text) -> (img, txt, logit_scale.exp())``;
  usable by clip-benchmark and trainable like any module.
* :func:`to_pruned` converts an open_clip ``CLIP`` (ViT image tower, plain text tower) into a
  ``PrunedCLIP`` with nothing pruned, with identical outputs; the mask machinery
  (:mod:`tinyclip.inherit.auto`) works on this representation only, so a pruned student can be masked again
  in the next stage of the multi-stage chain (paper section 3.3).
* :meth:`PrunedCLIP.save` / :func:`load_pruned` -- ``config.json`` + ``model.safetensors`` in a folder.
* :func:`param_counts` -- parameters under the paper's convention (vision tower complete, text tower without
  the token embedding; docs/sources.md §5) and :func:`pruned_architecture` -- per-layer
  figure data.

The layer list always keeps the teacher's depth: a layer whose heads and FFN are both pruned is an identity
(it has no parameters), which keeps layer indices aligned with the teacher for the figures.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import TinyCLIPError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "tinyclip-pruned-clip"
FORMAT_VERSION = 1
ACTIVATIONS = ("gelu", "quick_gelu")


# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass(kw_only=True)
class TowerConfig:
    """One transformer tower: hidden width, head width, and per layer the kept heads and FFN neurons."""

    width: int
    head_dim: int
    heads: list[int]  # per layer; 0 = attention sub-layer removed
    mlp: list[int]  # per layer; 0 = FFN sub-layer removed
    act: str = "gelu"
    ln_eps: float = 1e-5
    # The architecture this tower started from (set by to_pruned, carried through every prune) so that
    # figures can show what was removed: {"width": int, "heads": [...], "mlp": [...]}.
    origin: dict[str, Any] | None = None

    @property
    def layers(self) -> int:
        return len(self.heads)

    def _check(self, name: str) -> None:
        ints = [self.width, self.head_dim, *self.heads, *self.mlp]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise TinyCLIPError(f"pruned config: {name} widths, heads and mlp must be integers; fix the config")
        if self.width < 1 or self.head_dim < 1 or min(self.heads + self.mlp, default=0) < 0:
            raise TinyCLIPError(f"pruned config: {name} has a non-positive width or a negative layer size")
        if len(self.heads) != len(self.mlp):
            raise TinyCLIPError(f"pruned config: {name} 'heads' and 'mlp' must list the same number of layers")
        if self.act not in ACTIVATIONS:
            raise TinyCLIPError(f"pruned config: {name} act {self.act!r} is not one of {ACTIVATIONS}")


@dataclass(kw_only=True)
class VisionConfig(TowerConfig):
    image_size: list[int]  # [height, width]
    patch_size: list[int]  # [height, width]

    @property
    def num_tokens(self) -> int:
        return (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1]) + 1


@dataclass(kw_only=True)
class TextConfig(TowerConfig):
    context_length: int
    vocab_size: int
    causal: bool = True


@dataclass(kw_only=True)
class PrunedConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    # Size of the original teacher under the paper's convention: the denominator of the sparsity in every
    # stage of the auto chain (stage k's sparsity is measured against the original model, not stage k-1).
    reference_params: int | None = None

    def towers(self) -> dict[str, TowerConfig]:
        return {"vision": self.vision, "text": self.text}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrunedConfig":
        if not isinstance(data, dict):
            raise TinyCLIPError("pruned config: expected a JSON object; was the file written by PrunedCLIP.save?")
        data = dict(data)
        fmt, version = data.pop("format", FORMAT_NAME), data.pop("version", FORMAT_VERSION)
        if fmt != FORMAT_NAME or version != FORMAT_VERSION:
            raise TinyCLIPError(f"pruned config: format {fmt!r} v{version} is not {FORMAT_NAME!r} v{FORMAT_VERSION}")
        try:
            vision = _build_dataclass(VisionConfig, data.pop("vision"), "vision")
            text = _build_dataclass(TextConfig, data.pop("text"), "text")
            config = _build_dataclass(cls, {**data, "vision": vision, "text": text}, "top level")
        except KeyError as exc:
            raise TinyCLIPError(f"pruned config: missing entry {exc}; the config file is incomplete") from None
        config.validate()
        return config

    def validate(self) -> None:
        if not isinstance(self.embed_dim, int) or self.embed_dim < 1:
            raise TinyCLIPError("pruned config: embed_dim must be a positive integer")
        self.vision._check("vision")
        self.text._check("text")
        if len(self.vision.image_size) != 2 or len(self.vision.patch_size) != 2:
            raise TinyCLIPError("pruned config: vision image_size and patch_size must be [height, width]")


def _build_dataclass(cls, data: Any, name: str):
    if not isinstance(data, dict):
        raise TinyCLIPError(f"pruned config: the {name} entry must be an object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TinyCLIPError(f"pruned config: unknown {name} entries {unknown}; the file is not a pruned config")
    try:
        return cls(**data)
    except TypeError as exc:
        raise TinyCLIPError(f"pruned config: {name} entry is incomplete ({exc})") from None


# ----------------------------------------------------------------------------------------------------------
# modules


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        from open_clip.transformer import QuickGELU

        return QuickGELU()
    return nn.GELU()


class PrunedAttention(nn.Module):
    """Multi-head self-attention with ``heads`` heads of ``head_dim`` on a residual stream of any width.

    ``in_proj`` rows are laid out like ``nn.MultiheadAttention.in_proj_weight``: (q, k, v) x heads x head_dim.
    """

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.in_proj = nn.Linear(width, 3 * heads * head_dim)
        self.out_proj = nn.Linear(heads * head_dim, width)

    def attend(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """Concatenated head outputs softmax(QK^T/sqrt(d))V, shape [B, N, heads*head_dim] (before out_proj)."""
        batch, tokens, _ = x.shape
        qkv = self.in_proj(x).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        return self.out_proj(self.attend(x, causal))


class PrunedBlock(nn.Module):
    """Pre-LN residual block; ``attn``/``mlp`` (with their LayerNorms) are ``None`` when pruned away."""

    def __init__(self, width: int, heads: int, head_dim: int, mlp: int, act: str, ln_eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps) if heads else None
        self.attn = PrunedAttention(width, heads, head_dim) if heads else None
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps) if mlp else None
        self.mlp = _mlp(width, mlp, act) if mlp else None

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.ln_1(x), causal)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


def _mlp(width: int, hidden: int, act: str) -> nn.Sequential:
    layers = OrderedDict(c_fc=nn.Linear(width, hidden), gelu=_activation(act), c_proj=nn.Linear(hidden, width))
    return nn.Sequential(layers)


class _Tower(nn.Module):
    """Shared by both towers: the block stack (with optional gradient checkpointing)."""

    causal = False

    def _build_blocks(self, cfg: TowerConfig) -> None:
        self.blocks = nn.ModuleList(
            PrunedBlock(cfg.width, h, cfg.head_dim, f, cfg.act, cfg.ln_eps) for h, f in zip(cfg.heads, cfg.mlp)
        )
        self.grad_checkpointing = False

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


class PrunedVisionTower(_Tower):
    """ViT image tower (class token, learned positional embedding, ln_pre, blocks, ln_post, projection)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.image_size, self.patch_size = tuple(cfg.image_size), tuple(cfg.patch_size)
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        scale = cfg.width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_tokens, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self._build_blocks(cfg)
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, embed_dim))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Patch + class token + positional embedding, before ln_pre: [B, tokens, width]."""
        x = self.conv1(image.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(self.ln_pre(self.embed(image)))
        return self.ln_post(self.pool(x)) @ self.proj


class PrunedTextTower(_Tower):
    """Causal text transformer pooled at the EOT token (the highest token id), like open_clip's CLIP."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.causal = cfg.causal
        self.context_length, self.vocab_size = cfg.context_length, cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
        self._build_blocks(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(cfg.width**-0.5 * torch.randn(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def embed(self, text: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(text) + self.positional_embedding

    @staticmethod
    def pool(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(self.embed(text))
        return self.ln_final(self.pool(x, text)) @ self.text_projection


class PrunedCLIP(nn.Module):
    """A CLIP model whose towers may have per-layer head counts / FFN widths and reduced hidden widths."""

    def __init__(self, config: PrunedConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.visual = PrunedVisionTower(config.vision, config.embed_dim)
        self.text = PrunedTextTower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # open_clip-compatible attributes used by tokenizers / evaluation code
    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def vocab_size(self) -> int:
        return self.config.text.vocab_size

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.grad_checkpointing = self.text.grad_checkpointing = enable

    def param_counts(self) -> dict[str, int]:
        return param_counts(self)

    def save(self, directory: str | os.PathLike) -> Path:
        return save_pruned(self, directory)


# ----------------------------------------------------------------------------------------------------------
# conversion from open_clip


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise TinyCLIPError(f"to_pruned: {what} is not supported; use a ViT CLIP with a plain text tower")


def _block_dims(transformer, name: str) -> tuple[int, list[int], list[int], str, float]:
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    heads, mlp, acts, eps = [], [], set(), set()
    for block in transformer.resblocks:
        _check(type(block) is ResidualAttentionBlock, f"{name} block type {type(block).__name__}")
        _check(isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity), f"{name} LayerScale")
        _check(not hasattr(block, "ln_1_kv"), f"{name} cross-attention")
        _check(block.attn.in_proj_weight is not None and block.attn.in_proj_bias is not None, f"{name} attention")
        heads.append(block.attn.num_heads)
        mlp.append(block.mlp.c_fc.out_features)
        acts.add("quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu")
        _check(isinstance(block.mlp.gelu, (QuickGELU, nn.GELU)), f"{name} activation")
        _check(not isinstance(block.mlp.gelu, nn.GELU) or block.mlp.gelu.approximate == "none", f"{name} tanh-GELU")
        eps.update({block.ln_1.eps, block.ln_2.eps})
    _check(len(acts) <= 1 and len(eps) <= 1, f"{name} with mixed activations or LayerNorm eps")
    width = transformer.width
    _check(all(width % h == 0 for h in heads) and len({width // h for h in heads}) <= 1, f"{name} head width")
    head_dim = width // heads[0] if heads else 64
    return head_dim, heads, mlp, (acts.pop() if acts else "gelu"), (eps.pop() if eps else 1e-5)


def to_pruned(model: nn.Module) -> PrunedCLIP:
    """An open_clip ``CLIP`` (ViT image tower) as a :class:`PrunedCLIP` with nothing pruned (same outputs).

    A ``PrunedCLIP`` is returned unchanged. The reference size (the sparsity denominator) is the model's
    own parameter count under the paper's convention. Works on the meta device (no data is touched).
    """
    if isinstance(model, PrunedCLIP):
        return model
    from open_clip.model import CLIP
    from open_clip.transformer import VisionTransformer

    if not isinstance(model, CLIP):
        raise TinyCLIPError(f"to_pruned: expected an open_clip CLIP or a PrunedCLIP, got {type(model).__name__}")
    visual = model.visual
    _check(isinstance(visual, VisionTransformer), f"image tower {type(visual).__name__}")
    _check(visual.attn_pool is None and visual.pool_type == "tok" and not visual.final_ln_after_pool, "pooling")
    _check(isinstance(visual.patch_dropout, nn.Identity), "patch dropout")
    _check(isinstance(visual.ln_pre, nn.LayerNorm) and visual.proj is not None, "ViT without ln_pre or proj")
    _check(visual.conv1.bias is None, "patch embedding with bias")
    _check(model.text_pool_type == "argmax", f"text pooling {model.text_pool_type!r}")
    _check(isinstance(model.text_projection, nn.Parameter), "text projection layer")
    _check(getattr(model, "logit_bias", None) is None, "logit bias (SigLIP)")
    _check(model.transformer.batch_first and visual.transformer.batch_first, "sequence-first transformer")

    v_hd, v_heads, v_mlp, v_act, v_eps = _block_dims(visual.transformer, "vision")
    t_hd, t_heads, t_mlp, t_act, t_eps = _block_dims(model.transformer, "text")
    causal = model.attn_mask is not None
    if causal:
        expected = torch.full((model.context_length,) * 2, float("-inf")).triu(1)
        _check(model.attn_mask.is_meta or torch.equal(model.attn_mask.cpu(), expected), "non-causal text mask")
    vision = VisionConfig(
        width=visual.transformer.width, head_dim=v_hd, heads=v_heads, mlp=v_mlp, act=v_act, ln_eps=v_eps,
        image_size=list(visual.image_size), patch_size=list(visual.patch_size),
    )
    text = TextConfig(
        width=model.transformer.width, head_dim=t_hd, heads=t_heads, mlp=t_mlp, act=t_act, ln_eps=t_eps,
        context_length=model.context_length, vocab_size=model.vocab_size, causal=causal,
    )
    for tower in (vision, text):
        tower.origin = {"width": tower.width, "heads": list(tower.heads), "mlp": list(tower.mlp)}
    config = PrunedConfig(embed_dim=visual.proj.shape[1], vision=vision, text=text)
    config.reference_params = config_param_counts(config)["total"]

    device = model.logit_scale.device
    with torch.device("meta"):
        pruned = PrunedCLIP(config)
    pruned.load_state_dict(_open_clip_state(model), assign=True, strict=True)
    return pruned.to(device)


def _open_clip_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """open_clip CLIP tensors renamed to PrunedCLIP keys (values are cloned, so the models stay independent)."""
    out: dict[str, torch.Tensor] = {}
    v = model.visual
    out.update({
        "visual.conv1.weight": v.conv1.weight, "visual.class_embedding": v.class_embedding,
        "visual.positional_embedding": v.positional_embedding, "visual.proj": v.proj,
        "text.token_embedding.weight": model.token_embedding.weight,
        "text.positional_embedding": model.positional_embedding,
        "text.text_projection": model.text_projection, "logit_scale": model.logit_scale,
    })
    for prefix, ln in (("visual.ln_pre", v.ln_pre), ("visual.ln_post", v.ln_post), ("text.ln_final", model.ln_final)):
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = ln.weight, ln.bias
    for prefix, transformer in (("visual", v.transformer), ("text", model.transformer)):
        for i, block in enumerate(transformer.resblocks):
            p = f"{prefix}.blocks.{i}."
            out.update({
                p + "ln_1.weight": block.ln_1.weight, p + "ln_1.bias": block.ln_1.bias,
                p + "attn.in_proj.weight": block.attn.in_proj_weight, p + "attn.in_proj.bias": block.attn.in_proj_bias,
                p + "attn.out_proj.weight": block.attn.out_proj.weight, p + "attn.out_proj.bias": block.attn.out_proj.bias,
                p + "ln_2.weight": block.ln_2.weight, p + "ln_2.bias": block.ln_2.bias,
                p + "mlp.c_fc.weight": block.mlp.c_fc.weight, p + "mlp.c_fc.bias": block.mlp.c_fc.bias,
                p + "mlp.c_proj.weight": block.mlp.c_proj.weight, p + "mlp.c_proj.bias": block.mlp.c_proj.bias,
            })
    return {k: t.detach().clone() for k, t in out.items()}


# ----------------------------------------------------------------------------------------------------------
# parameter counts and figure data


def params_per_hidden_dim(cfg: TowerConfig, embed_dim: int) -> int:
    """Parameters outside the blocks that come and go with one hidden dimension (paper convention).

    vision: conv1 filter, class embedding, positional embedding column, ln_pre and ln_post (weight + bias),
    projection row. text: positional embedding column, ln_final, projection row (no token embedding).
    """
    if isinstance(cfg, VisionConfig):
        return 3 * cfg.patch_size[0] * cfg.patch_size[1] + 1 + cfg.num_tokens + 4 + embed_dim
    return cfg.context_length + 2 + embed_dim


def _tower_param_count(cfg: TowerConfig, embed_dim: int) -> int:
    """Parameters of one tower from its config (paper convention: no text token embedding)."""
    d, hd = cfg.width, cfg.head_dim
    count = d * params_per_hidden_dim(cfg, embed_dim)
    for h, f in zip(cfg.heads, cfg.mlp):
        if h:
            count += 2 * d + (d + 1) * 3 * h * hd + (h * hd + 1) * d  # ln_1, in_proj, out_proj
        if f:
            count += 2 * d + (d + 1) * f + (f + 1) * d  # ln_2, c_fc, c_proj
    return count


def config_param_counts(config: PrunedConfig) -> dict[str, int]:
    """Paper-convention parameter counts computed from a config alone (no weights needed)."""
    vision = _tower_param_count(config.vision, config.embed_dim)
    text = _tower_param_count(config.text, config.embed_dim)
    return {"vision": vision, "text": text, "total": vision + text}


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of a PrunedCLIP or open_clip CLIP, counted tensor by tensor, under the paper's convention.

    vision = every parameter of the image tower; text = the text tower without the token-embedding matrix;
    the logit scale belongs to neither (docs/sources.md §5). Also returns
    ``token_embedding`` (excluded from ``total``).
    """
    if isinstance(model, PrunedCLIP):
        vision = sum(p.numel() for p in model.visual.parameters())
        token = model.text.token_embedding.weight.numel()
        text = sum(p.numel() for p in model.text.parameters()) - token
    else:
        vision = sum(p.numel() for p in model.visual.parameters())
        token = model.token_embedding.weight.numel()
        text_modules = (model.transformer, model.ln_final)
        text = sum(p.numel() for m in text_modules for p in m.parameters())
        text += model.positional_embedding.numel() + model.text_projection.numel()
    return {"vision": vision, "text": text, "total": vision + text, "token_embedding": token}


def pruned_architecture(source: "PrunedCLIP | PrunedConfig | str | os.PathLike") -> dict[str, Any]:
    """Per-layer figure data of a pruned student (a model, a config, or a saved folder) as plain dicts.

    For each tower: hidden width (and the original), per layer kept heads / FFN width (and the originals),
    whether the MHA / FFN sub-layer was dropped; plus parameter counts and the sparsity vs the reference.
    """
    if isinstance(source, PrunedCLIP):
        config = source.config
    elif isinstance(source, PrunedConfig):
        config = source
    else:
        config = _read_config(Path(source))
    counts = config_param_counts(config)
    out: dict[str, Any] = {}
    for name, cfg in config.towers().items():
        origin = cfg.origin or {"width": cfg.width, "heads": cfg.heads, "mlp": cfg.mlp}
        layers = [
            {
                "layer": i, "heads": h, "heads_original": origin["heads"][i], "mlp": f, "mlp_original": origin["mlp"][i],
                "attn_dropped": h == 0, "mlp_dropped": f == 0,
            }
            for i, (h, f) in enumerate(zip(cfg.heads, cfg.mlp))
        ]
        out[name] = {
            "hidden": cfg.width, "hidden_original": origin["width"], "head_dim": cfg.head_dim,
            "layers": layers, "params": counts[name],
        }
    out["params"] = counts["total"]
    out["reference_params"] = config.reference_params
    out["sparsity"] = 1 - counts["total"] / config.reference_params if config.reference_params else None
    return out


# ----------------------------------------------------------------------------------------------------------
# save / load


def save_pruned(model: PrunedCLIP, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each file replaced atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp_weights, tmp_config = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt", "tinyclip": FORMAT_NAME})
    tmp_config.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_config, directory / CONFIG_FILE)
    return directory


def _read_config(directory: Path) -> PrunedConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise TinyCLIPError(f"{path} not found; a pruned student folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TinyCLIPError(f"{path} is not valid JSON ({exc}); re-export the pruned student") from None
    return PrunedConfig.from_dict(data)


def load_pruned(directory: str | os.PathLike, device: str | torch.device = "cpu") -> PrunedCLIP:
    """Load a student written by :meth:`PrunedCLIP.save`; corrupt or mismatched files raise TinyCLIPError."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = _read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise TinyCLIPError(f"{weights} not found; a pruned student folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated / garbled files
        raise TinyCLIPError(f"{weights} cannot be read ({exc}); re-export the pruned student") from None
    with torch.device("meta"):
        model = PrunedCLIP(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise TinyCLIPError(f"{weights} does not match {CONFIG_FILE}: {' '.join(first[:3])}") from None
    return model.to(device)
