"""Manual weight inheritance (TinyCLIP paper §3.2, "manual inheritance").

A smaller student of the same family starts from a subset of its teacher's weights: the paper keeps k text
layers "at even intervals" (text is redundant in depth) and the leading k channels of the image encoder (image
is redundant in width). This module does that for open_clip ``CLIP`` models with a ``VisionTransformer`` or
``ModifiedResNet`` image tower and the standard text transformer, for any mix of width and depth reductions:

* depth (ViT blocks, text blocks, ResNet blocks per stage): :func:`select_layers`;
* width: residual channels, attention heads (``in_proj_weight`` [3·H·hd, D] is viewed as (3, H, hd, D) and the
  same heads are kept in q, k and v), MLP neurons, the joint embedding dimension, ResNet channels (incl. the
  attention pool), with patch/class/positional embeddings, LayerNorms, BatchNorms and projections cut to match.

Every student parameter and buffer is copied from the teacher; the report's ``inherited_fraction`` counts it.
The student is an ordinary open_clip ``CLIP`` (export it with :func:`tinyclip.export.save_open_clip_dir`).

Deviations from the official code (docs/official_code.md §2, §7; docs/deviations.md), each a deliberate choice:

* **Depth rule.** Default ``depth_rule="even"``: evenly spaced layers that include the first and the last
  teacher layer, ``round(i·(T−1)/(S−1))`` (paper: "k layers at even intervals"). The official code's
  ``interval_front`` rule (step ``T//S`` when S divides T, else the first S layers; it never keeps the last
  layer, §7.8) is ``depth_rule="interval_front"``. Both give layer 0 for S = 1.
* **Logit scale is inherited** (the official code leaves the student at log(1/0.07) and its first step runs at
  τ ≈ 14.3, §7.5).
* **Width rule.** ``width_rule="leading"`` (default) keeps the first k channels/heads/neurons, as the paper and
  the official code do. ``width_rule="l2norm"`` is an optional extra, never the default: it keeps the k units
  with the largest weight norm (see :func:`_rank`), for transformer towers only.
* **Shorter context.** A student with a shorter text context takes the first positions of the positional
  embedding and the causal mask (the official leading-slice rule would do the same); texts that fit the
  shorter context encode exactly as in a teacher of the same width and depth. Longer contexts are refused.
* **Activation mismatch** (teacher QuickGELU, student GELU, e.g. OpenAI RN50 weights into the TinyCLIP-ResNet
  configs, §7.9) is not refused, as in the official code, but reported in ``report["warnings"]``.

Refused up front by :func:`check_inheritable` (``TinyCLIPError``, before any model is built): a student wider
or deeper than its teacher anywhere, different image size or patch size (positional embeddings), different
vocabulary, longer context, different tower type, different head width, and open_clip options whose tensors
this module does not map (timm/HF towers, custom attention blocks, layer scale, attentional pooling, ...).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip import CLIPTextCfg, CLIPVisionCfg
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer
from torch import nn

from .. import zoo
from ..errors import TinyCLIPError
from ..export import LOCAL_DIR_PREFIX, load_open_clip_dir, preprocess_cfg_of, read_open_clip_config, save_open_clip_dir

DEPTH_RULES = ("even", "interval_front")
WIDTH_RULES = ("leading", "l2norm")
_TOP_LEVEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
                   "nonscalar_logit_scale", "output_dict", "custom_text"}
_CUSTOM_BLOCK_KEYS = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


@dataclass
class ManualInheritSpec:
    """How to choose what a student inherits (plain data; a recipe's ``inherit:`` mapping)."""

    depth_rule: str = "even"       # "even" (paper) | "interval_front" (official code, §2.2)
    width_rule: str = "leading"    # "leading" (paper + official) | "l2norm" (optional, transformer towers only)

    def __post_init__(self) -> None:
        if self.depth_rule not in DEPTH_RULES:
            raise TinyCLIPError(f"unknown depth_rule {self.depth_rule!r}; use one of {', '.join(DEPTH_RULES)}")
        if self.width_rule not in WIDTH_RULES:
            raise TinyCLIPError(f"unknown width_rule {self.width_rule!r}; use one of {', '.join(WIDTH_RULES)}")


# --------------------------------------------------------------------------------------------------------------
# Depth

def select_layers(teacher_depth: int, student_depth: int, rule: str) -> list[int]:
    """Teacher block index for each student block (ascending), under ``rule`` ("even" | "interval_front")."""
    if rule not in DEPTH_RULES:
        raise TinyCLIPError(f"unknown depth rule {rule!r}; use one of {', '.join(DEPTH_RULES)}")
    if not 1 <= student_depth <= teacher_depth:
        raise TinyCLIPError(f"cannot select {student_depth} of {teacher_depth} layers; "
                            "the student needs between 1 and the teacher's number of layers")
    if rule == "interval_front":
        step = teacher_depth // student_depth if teacher_depth % student_depth == 0 else 1
        return [i * step for i in range(student_depth)]
    if student_depth == 1:
        return [0]
    spacing = (teacher_depth - 1) / (student_depth - 1)  # >= 1, so the rounded indices are distinct
    return [int(math.floor(i * spacing + 0.5)) for i in range(student_depth)]


# --------------------------------------------------------------------------------------------------------------
# Architecture summaries, from a config dict or from a built model

@dataclass(frozen=True)
class _Arch:
    vision: str                    # "vit" | "resnet"
    image_size: tuple[int, int]
    patch_size: int | None         # ViT only
    v_width: int
    v_layers: tuple[int, ...]      # (L,) for a ViT, the four stage depths for a ResNet
    v_head_width: int
    v_mlp: int                     # ViT MLP neurons; 0 for a ResNet
    v_ln_pre: bool
    t_width: int
    t_heads: int
    t_layers: int
    t_mlp: int
    context: int
    vocab: int
    causal: bool
    embed_dim: int
    quick_gelu: bool
    logit_bias: bool

    @property
    def v_heads(self) -> int:
        return (self.v_width * 32 if self.vision == "resnet" else self.v_width) // self.v_head_width

    @property
    def t_head_width(self) -> int:
        return self.t_width // self.t_heads


def _pair(size: Any) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def _arch_from_cfg(cfg: Any, role: str) -> _Arch:
    if not isinstance(cfg, dict) or any(k not in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise TinyCLIPError(f"the {role} config is not an open_clip model config "
                            "(it needs embed_dim, vision_cfg and text_cfg)")
    unknown = sorted(set(cfg) - _TOP_LEVEL_KEYS)
    if unknown or cfg.get("custom_text"):
        what = ", ".join(unknown) if unknown else "custom_text"
        raise TinyCLIPError(f"the {role} config uses {what}, which manual inheritance does not support; "
                            "use a plain open_clip CLIP config")
    try:
        v = CLIPVisionCfg(**cfg["vision_cfg"])
        t = CLIPTextCfg(**cfg["text_cfg"])
    except TypeError as exc:
        raise TinyCLIPError(f"the {role} config has an invalid vision_cfg/text_cfg ({exc})") from exc

    def refuse(what: str) -> TinyCLIPError:
        return TinyCLIPError(f"the {role} config uses {what}, which manual inheritance does not map; "
                             "use a plain ViT/ModifiedResNet + text transformer config")

    if v.timm_model_name:
        raise refuse("a timm vision tower")
    if t.hf_model_name:
        raise refuse("a Hugging Face text tower")
    for name, c in (("vision", v), ("text", t)):
        if c.ls_init_value is not None:
            raise refuse(f"{name} layer scale (ls_init_value)")
        if c.block_type not in (None, "default") or any(getattr(c, k) for k in _CUSTOM_BLOCK_KEYS):
            raise refuse(f"custom {name} attention blocks")
    if v.attentional_pool:
        raise refuse("attentional pooling")
    if v.pos_embed_type != "learnable":
        raise refuse(f"pos_embed_type={v.pos_embed_type!r}")
    if t.embed_cls or t.proj_type != "linear" or t.proj_bias:
        raise refuse("a non-standard text head (embed_cls / proj_type / proj_bias)")

    resnet = isinstance(v.layers, (list, tuple))
    if resnet and len(v.layers) != 4:
        raise TinyCLIPError(f"the {role} ModifiedResNet needs 4 stage depths, got {list(v.layers)}")
    v_layers = tuple(int(n) for n in v.layers) if resnet else (int(v.layers),)
    if min(v_layers) < 1 or t.layers < 1:
        raise TinyCLIPError(f"the {role} config has a tower with no layers")
    v_units = v.width * 32 if resnet else v.width
    if v_units % v.head_width:
        raise TinyCLIPError(f"the {role} vision width {v.width} is not a multiple of head_width {v.head_width}")
    if t.width % t.heads:
        raise TinyCLIPError(f"the {role} text width {t.width} is not a multiple of its {t.heads} heads")
    return _Arch(
        vision="resnet" if resnet else "vit",
        image_size=_pair(v.image_size),
        patch_size=None if resnet else int(v.patch_size),
        v_width=int(v.width),
        v_layers=v_layers,
        v_head_width=int(v.head_width),
        v_mlp=0 if resnet else int(v.width * v.mlp_ratio),
        v_ln_pre=resnet or not v.no_ln_pre,
        t_width=int(t.width),
        t_heads=int(t.heads),
        t_layers=int(t.layers),
        t_mlp=int(t.width * t.mlp_ratio),
        context=int(t.context_length),
        vocab=int(t.vocab_size),
        causal=not t.no_causal_mask,
        embed_dim=int(cfg["embed_dim"]),
        quick_gelu=bool(cfg.get("quick_gelu", False)),
        logit_bias=cfg.get("init_logit_bias") is not None,
    )


def _check_blocks(blocks: nn.ModuleList, tower: str) -> None:
    for block in blocks:
        if (type(block) is not ResidualAttentionBlock or not isinstance(block.attn, nn.MultiheadAttention)
                or not isinstance(block.ls_1, nn.Identity) or hasattr(block, "ln_1_kv")):
            raise TinyCLIPError(f"the teacher's {tower} blocks are not plain open_clip ResidualAttentionBlocks; "
                                "manual inheritance cannot map them")


def _arch_from_model(model: nn.Module) -> _Arch:
    """The teacher's architecture, read off the built model (so any open_clip CLIP can be a teacher)."""
    if not isinstance(model, open_clip.CLIP) or not hasattr(model, "transformer"):
        raise TinyCLIPError(f"the teacher is a {type(model).__name__}, not an open_clip CLIP; "
                            "manual inheritance needs a plain CLIP (ViT or ModifiedResNet + text transformer)")
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None or visual.proj is None:
            raise TinyCLIPError("the teacher's ViT uses attentional pooling or no projection; not supported")
        blocks = visual.transformer.resblocks
        _check_blocks(blocks, "vision")
        width = visual.conv1.out_channels
        vision = dict(vision="vit", image_size=_pair(visual.image_size), patch_size=int(visual.patch_size[0]),
                      v_width=width, v_layers=(len(blocks),), v_head_width=width // blocks[0].attn.num_heads,
                      v_mlp=blocks[0].mlp.c_fc.out_features, v_ln_pre=not isinstance(visual.ln_pre, nn.Identity))
    elif isinstance(visual, ModifiedResNet):
        width = visual.layer1[0].conv1.in_channels
        vision = dict(vision="resnet", image_size=_pair(visual.image_size), patch_size=None, v_width=width,
                      v_layers=tuple(len(getattr(visual, f"layer{s}")) for s in range(1, 5)),
                      v_head_width=width * 32 // visual.attnpool.num_heads, v_mlp=0, v_ln_pre=True)
    else:
        raise TinyCLIPError(f"the teacher's image tower is a {type(visual).__name__}; "
                            "manual inheritance supports VisionTransformer and ModifiedResNet")
    text_blocks = model.transformer.resblocks
    _check_blocks(text_blocks, "text")
    if not isinstance(model.text_projection, nn.Parameter):
        raise TinyCLIPError("the teacher's text projection is not a plain matrix; not supported")
    return _Arch(
        **vision,
        t_width=model.transformer.width,
        t_heads=text_blocks[0].attn.num_heads,
        t_layers=len(text_blocks),
        t_mlp=text_blocks[0].mlp.c_fc.out_features,
        context=model.positional_embedding.shape[0],
        vocab=model.token_embedding.num_embeddings,
        causal=model.attn_mask is not None,
        embed_dim=model.text_projection.shape[1],
        quick_gelu=isinstance(text_blocks[0].mlp.gelu, QuickGELU),
        logit_bias=model.logit_bias is not None,
    )


# --------------------------------------------------------------------------------------------------------------
# Compatibility

def _check_archs(t: _Arch, s: _Arch, spec: ManualInheritSpec | None) -> list[str]:
    """Raise TinyCLIPError for an impossible pair; return warnings for a possible but imperfect one."""
    def refuse(why: str) -> TinyCLIPError:
        return TinyCLIPError(f"cannot inherit: {why}")

    if t.vision != s.vision:
        raise refuse(f"the teacher's image tower is a {t.vision} and the student's a {s.vision}; "
                     "choose a student of the teacher's family")
    if t.image_size != s.image_size:
        raise refuse(f"image size {s.image_size} differs from the teacher's {t.image_size} "
                     "(positional embeddings cannot be sliced)")
    if t.vision == "vit" and t.patch_size != s.patch_size:
        raise refuse(f"patch size {s.patch_size} differs from the teacher's {t.patch_size}")
    if t.v_head_width != s.v_head_width:
        raise refuse(f"vision head width {s.v_head_width} differs from the teacher's {t.v_head_width}; "
                     "heads are inherited whole")
    if t.t_head_width != s.t_head_width:
        raise refuse(f"text head width {s.t_head_width} (width {s.t_width} / {s.t_heads} heads) differs from the "
                     f"teacher's {t.t_head_width}; heads are inherited whole")
    if t.vocab != s.vocab:
        raise refuse(f"vocabulary size {s.vocab} differs from the teacher's {t.vocab}")
    if s.context > t.context:
        raise refuse(f"context length {s.context} is longer than the teacher's {t.context}")
    if t.causal != s.causal:
        raise refuse("one text tower is causal and the other is not (no_causal_mask differs)")
    if s.v_ln_pre and not t.v_ln_pre:
        raise refuse("the student has ln_pre and the teacher has none (no_ln_pre differs)")
    if s.logit_bias and not t.logit_bias:
        raise refuse("the student has a logit bias and the teacher has none")
    bigger = [
        ("vision width", s.v_width, t.v_width),
        ("vision MLP width", s.v_mlp, t.v_mlp),
        ("text width", s.t_width, t.t_width),
        ("text MLP width", s.t_mlp, t.t_mlp),
        ("embed dim", s.embed_dim, t.embed_dim),
        ("text layers", s.t_layers, t.t_layers),
    ]
    if t.vision == "vit":
        bigger.append(("vision layers", s.v_layers[0], t.v_layers[0]))
    else:
        bigger += [(f"ResNet stage {i + 1} blocks", n_s, n_t)
                   for i, (n_s, n_t) in enumerate(zip(s.v_layers, t.v_layers))]
    for what, n_student, n_teacher in bigger:
        if n_student > n_teacher:
            raise refuse(f"the student's {what} ({n_student}) exceeds the teacher's ({n_teacher}); "
                         "a student can only be narrower or shallower")
    if spec is not None and spec.width_rule == "l2norm" and t.vision == "resnet":
        raise TinyCLIPError("width_rule 'l2norm' supports transformer towers only; use 'leading' for ResNets")
    notes = []
    if t.quick_gelu != s.quick_gelu:
        notes.append(f"activation mismatch: the teacher uses {'QuickGELU' if t.quick_gelu else 'GELU'} and the "
                     f"student {'QuickGELU' if s.quick_gelu else 'GELU'} (as in the official RN50 recipe)")
    return notes


def check_inheritable(teacher_cfg: dict, student_cfg: dict, spec: ManualInheritSpec | None = None) -> None:
    """Raise :class:`TinyCLIPError` unless ``student_cfg`` can inherit from ``teacher_cfg`` (configs only)."""
    _check_archs(_arch_from_cfg(teacher_cfg, "teacher"), _arch_from_cfg(student_cfg, "student"), spec)


def resolve_model_cfg(name_or_cfg: str | dict) -> dict:
    """A model config from a registered open_clip name, ``local-dir:PATH``, or a config dict (copied)."""
    if isinstance(name_or_cfg, dict):
        return copy.deepcopy(name_or_cfg)
    name = str(name_or_cfg)
    if name.startswith(LOCAL_DIR_PREFIX):
        return read_open_clip_config(name)["model_cfg"]
    if name.startswith("hf-hub:"):  # open_clip would try to download its config
        raise TinyCLIPError(f"{name}: hub models need a download; export it to a folder and use local-dir:PATH")
    return zoo.model_config(name)


# --------------------------------------------------------------------------------------------------------------
# What to keep

def _rank(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (ties: lower index first)."""
    order = torch.argsort(score.cpu(), descending=True, stable=True)[:k]
    return order.sort().values


def _share(sq: torch.Tensor) -> torch.Tensor:
    """Per-unit squared norms as shares of their tensor's total, so that no one tensor's scale dominates."""
    total = sq.sum()
    return sq / total if total > 0 else sq


@dataclass
class _TowerPlan:
    layers: list[int]              # teacher block for each student block
    hidden: torch.Tensor           # kept residual channels
    heads: list[torch.Tensor]      # kept heads, per student block
    mlp: list[torch.Tensor]        # kept MLP neurons, per student block
    head_dim: int


def _leading(n: int) -> torch.Tensor:
    return torch.arange(n)


def _plan_tower(ts: dict[str, torch.Tensor], prefix: str, embed_sq: list[torch.Tensor], layers: list[int],
                width: int, heads: int, mlp: int, head_dim: int, rule: str) -> _TowerPlan:
    """Choose the residual channels, heads and MLP neurons of one transformer tower.

    ``embed_sq`` lists per-channel squared-norm terms of the tower's non-block tensors (embeddings, projection).
    Under "l2norm" a residual channel's score sums the shares (:func:`_share`) of every weight matrix that reads
    or writes it in the kept blocks and around them; a head's score is the squared norm of its q, k, v rows
    and out_proj columns, an MLP neuron's that of its c_fc row and c_proj column (kept channels only).
    """
    if rule == "leading":
        return _TowerPlan(layers, _leading(width), [_leading(heads)] * len(layers),
                          [_leading(mlp)] * len(layers), head_dim)
    block = f"{prefix}resblocks."
    score = sum(_share(term) for term in embed_sq)
    for i in layers:
        p = f"{block}{i}."
        for name, dim in (("attn.in_proj_weight", 0), ("attn.out_proj.weight", 1),
                          ("mlp.c_fc.weight", 0), ("mlp.c_proj.weight", 1)):
            score = score + _share(ts[p + name].float().pow(2).sum(dim))
    hidden = _rank(score, width)
    head_sel, mlp_sel = [], []
    for i in layers:
        p = f"{block}{i}."
        in_w = ts[p + "attn.in_proj_weight"].float()[:, hidden]
        n_heads = in_w.shape[0] // (3 * head_dim)
        qkv = in_w.reshape(3, n_heads, head_dim, -1).pow(2).sum((0, 2, 3))
        out = ts[p + "attn.out_proj.weight"].float()[hidden].reshape(len(hidden), n_heads, head_dim)
        head_sel.append(_rank(qkv + out.pow(2).sum((0, 2)), heads))
        fc = ts[p + "mlp.c_fc.weight"].float()[:, hidden].pow(2).sum(1)
        proj = ts[p + "mlp.c_proj.weight"].float()[hidden].pow(2).sum(0)
        mlp_sel.append(_rank(fc + proj, mlp))
    return _TowerPlan(layers, hidden, head_sel, mlp_sel, head_dim)


# --------------------------------------------------------------------------------------------------------------
# Slicing

def _take(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    if idx.numel() == t.shape[dim] and torch.equal(idx, torch.arange(t.shape[dim])):
        return t  # everything kept, in order (selections live on the CPU)
    return t.index_select(dim, idx.to(t.device))


def _slice_block(src: dict[str, torch.Tensor], p: str, sub: str, plan: _TowerPlan, j: int) -> torch.Tensor:
    """Student block ``j``'s tensor ``sub``, cut from teacher block ``plan.layers[j]`` (prefix ``p``)."""
    h, heads, mlp, hd = plan.hidden, plan.heads[j], plan.mlp[j], plan.head_dim
    t = src[f"{p}resblocks.{plan.layers[j]}.{sub}"]
    if sub in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.out_proj.bias", "mlp.c_proj.bias"):
        return _take(t, 0, h)
    if sub == "attn.in_proj_weight":   # [3·H·hd, D] = (q|k|v, head, head_dim, D): same heads in q, k and v
        n_heads = t.shape[0] // (3 * hd)
        x = _take(_take(t.reshape(3, n_heads, hd, t.shape[1]), 1, heads), 3, h)
        return x.reshape(3 * len(heads) * hd, len(h))
    if sub == "attn.in_proj_bias":
        n_heads = t.shape[0] // (3 * hd)
        return _take(t.reshape(3, n_heads, hd), 1, heads).reshape(-1)
    if sub == "attn.out_proj.weight":  # [D, H·hd]: the columns of the kept heads
        n_heads = t.shape[1] // hd
        x = _take(_take(t, 0, h).reshape(len(h), n_heads, hd), 1, heads)
        return x.reshape(len(h), len(heads) * hd)
    if sub == "mlp.c_fc.weight":
        return _take(_take(t, 0, mlp), 1, h)
    if sub == "mlp.c_fc.bias":
        return _take(t, 0, mlp)
    if sub == "mlp.c_proj.weight":
        return _take(_take(t, 0, h), 1, mlp)
    raise TinyCLIPError(f"cannot inherit block tensor {sub!r}: unsupported layout")


def _leading_slice(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The official ``prune_param``: the leading slice on every axis (scalars are copied)."""
    return t[tuple(slice(0, n) for n in shape)] if t.dim() else t


_VIT_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.(.+)$")
_TEXT_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_RESNET_BLOCK = re.compile(r"^visual\.layer([1-4])\.(\d+)\.(.+)$")


def _source_tensor(name: str, dst: torch.Tensor, src: dict[str, torch.Tensor], s_arch: _Arch,
                   vis: _TowerPlan | None, resnet_map: list[list[int]] | None, txt: _TowerPlan,
                   embed: torch.Tensor) -> torch.Tensor:
    """The teacher-derived value of student tensor ``name``."""
    if m := _TEXT_BLOCK.match(name):
        return _slice_block(src, "transformer.", m.group(2), txt, int(m.group(1)))
    h_t = txt.hidden
    if name == "token_embedding.weight":
        return _take(src[name], 1, h_t)
    if name == "positional_embedding":
        return _take(src[name][: s_arch.context], 1, h_t)
    if name in ("ln_final.weight", "ln_final.bias"):
        return _take(src[name], 0, h_t)
    if name == "text_projection":
        return _take(_take(src[name], 0, h_t), 1, embed)
    if name == "attn_mask":  # causal mask: its leading block is the shorter context's mask
        return src[name][: s_arch.context, : s_arch.context]
    if name in ("logit_scale", "logit_bias"):
        return src[name].reshape(dst.shape)
    if resnet_map is not None:
        if m := _RESNET_BLOCK.match(name):
            stage, j, sub = m.groups()
            name = f"visual.layer{stage}.{resnet_map[int(stage) - 1][int(j)]}.{sub}"
        if name.startswith("visual."):
            return _leading_slice(src[name], dst.shape)
    else:
        assert vis is not None
        if m := _VIT_BLOCK.match(name):
            return _slice_block(src, "visual.transformer.", m.group(2), vis, int(m.group(1)))
        h_v = vis.hidden
        if name == "visual.conv1.weight" or name == "visual.class_embedding" or name.startswith(
                ("visual.ln_pre.", "visual.ln_post.")):
            return _take(src[name], 0, h_v)
        if name == "visual.positional_embedding":
            return _take(src[name], 1, h_v)
        if name == "visual.proj":
            return _take(_take(src[name], 0, h_v), 1, embed)
    raise TinyCLIPError(f"cannot inherit {name!r}: unsupported model layout")


# --------------------------------------------------------------------------------------------------------------
# Entry point

def _build_empty(student_cfg: dict, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The student's modules with uninitialised storage: every tensor is filled from the teacher below."""
    student = zoo.build_shape_model(student_cfg)  # on the meta device: no time spent on a random init
    if device.type != "meta":
        student = student.to_empty(device=device)
    return student.to(dtype=dtype)


def inherit_manual(teacher: nn.Module, student_cfg: dict | str, spec: ManualInheritSpec | None = None
                   ) -> tuple[nn.Module, dict]:
    """Build ``student_cfg`` (a config dict, registered name or ``local-dir:PATH``) from ``teacher``'s weights.

    Returns ``(student, report)``; the student is an open_clip ``CLIP`` on the teacher's device and dtype
    (the 'meta' device works for shape checks with the "leading" width rule) in the teacher's train/eval mode.
    The report holds ``inherited_fraction`` (inherited elements / student elements), ``layer_map``
    (``{"visual": [...] or four per-stage lists, "text": [...]}``), the widths kept and any warnings.
    """
    spec = spec or ManualInheritSpec()
    s_cfg = resolve_model_cfg(student_cfg)
    s_arch = _arch_from_cfg(s_cfg, "student")
    t_arch = _arch_from_model(teacher)
    notes = _check_archs(t_arch, s_arch, spec)

    src: dict[str, torch.Tensor] = {n: p.detach() for n, p in teacher.named_parameters()}
    src.update({n: b for n, b in teacher.named_buffers()})
    device = teacher.text_projection.device
    if spec.width_rule == "l2norm" and device.type == "meta":
        raise TinyCLIPError("width_rule 'l2norm' ranks real weights; the teacher is on the meta device")

    # text tower (its width decides token/positional embeddings and the text projection rows)
    t_layers = select_layers(t_arch.t_layers, s_arch.t_layers, spec.depth_rule)
    # the joint embedding: the same output dims in both projections, else the towers' spaces would not match
    if spec.width_rule == "l2norm":
        e_score = (_share(src["visual.proj"].float().pow(2).sum(0))  # l2norm implies a ViT (checked above)
                   + _share(src["text_projection"].float().pow(2).sum(0)))
        embed = _rank(e_score, s_arch.embed_dim)
        t_embed_sq = [src["token_embedding.weight"].float().pow(2).sum(0),
                      src["positional_embedding"].float().pow(2).sum(0),
                      src["text_projection"].float()[:, embed].pow(2).sum(1)]
    else:
        embed, t_embed_sq = _leading(s_arch.embed_dim), []
    txt = _plan_tower(src, "transformer.", t_embed_sq, t_layers, s_arch.t_width, s_arch.t_heads, s_arch.t_mlp,
                      t_arch.t_head_width, spec.width_rule)

    vis, resnet_map = None, None
    if t_arch.vision == "vit":
        v_layers = select_layers(t_arch.v_layers[0], s_arch.v_layers[0], spec.depth_rule)
        v_embed_sq = []
        if spec.width_rule == "l2norm":
            v_embed_sq = [src["visual.conv1.weight"].float().pow(2).sum((1, 2, 3)),
                          src["visual.class_embedding"].float().pow(2),
                          src["visual.positional_embedding"].float().pow(2).sum(0),
                          src["visual.proj"].float()[:, embed].pow(2).sum(1)]
        vis = _plan_tower(src, "visual.transformer.", v_embed_sq, v_layers, s_arch.v_width, s_arch.v_heads,
                          s_arch.v_mlp, t_arch.v_head_width, spec.width_rule)
        visual_map: list = v_layers
    else:
        resnet_map = [select_layers(n_t, n_s, spec.depth_rule) for n_t, n_s in zip(t_arch.v_layers, s_arch.v_layers)]
        visual_map = resnet_map

    student = _build_empty(s_cfg, device, teacher.text_projection.dtype)
    tensors = [*student.named_parameters(), *student.named_buffers()]
    total = sum(t.numel() for _, t in tensors)
    inherited = 0
    with torch.no_grad():
        for name, dst in tensors:
            value = _source_tensor(name, dst, src, s_arch, vis, resnet_map, txt, embed)
            if value.shape != dst.shape:  # a mapping bug, never a user error
                raise RuntimeError(f"inheritance produced {tuple(value.shape)} for {name}, "
                                   f"expected {tuple(dst.shape)}")
            dst.copy_(value)
            inherited += dst.numel()
    student.train(teacher.training)
    # same image size by construction, so the teacher's preprocessing (normalisation) is the student's
    open_clip.set_model_preprocess_cfg(student, preprocess_cfg_of(teacher))

    for note in notes:
        warnings.warn(note, stacklevel=2)
    report = {
        "method": "manual",
        "paper_section": "3.2",
        **asdict(spec),
        "teacher_arch": _arch_summary(t_arch),
        "student_config": s_cfg,
        "layer_map": {"visual": visual_map, "text": t_layers},
        "widths": {
            "visual": {"teacher": t_arch.v_width, "student": s_arch.v_width},
            "visual_heads": {"teacher": t_arch.v_heads, "student": s_arch.v_heads},
            "visual_mlp": {"teacher": t_arch.v_mlp, "student": s_arch.v_mlp},
            "text": {"teacher": t_arch.t_width, "student": s_arch.t_width},
            "text_heads": {"teacher": t_arch.t_heads, "student": s_arch.t_heads},
            "text_mlp": {"teacher": t_arch.t_mlp, "student": s_arch.t_mlp},
            "embed_dim": {"teacher": t_arch.embed_dim, "student": s_arch.embed_dim},
            "context_length": {"teacher": t_arch.context, "student": s_arch.context},
        },
        "logit_scale_inherited": True,
        "inherited_elements": inherited,
        "student_elements": total,
        "inherited_fraction": inherited / total if total else 0.0,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "warnings": notes,
    }
    return student, report


def _arch_summary(a: _Arch) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(a, f.name), tuple) else v) for f in fields(a)}


# --------------------------------------------------------------------------------------------------------------
# CLI: tinyclip inherit


def _cli_inherit(args: argparse.Namespace) -> int:
    spec = ManualInheritSpec(depth_rule=args.depth_rule, width_rule=args.width_rule)
    teacher_cfg = resolve_model_cfg(args.teacher)
    student_cfg = resolve_model_cfg(args.student)
    check_inheritable(teacher_cfg, student_cfg, spec)  # before any model is built
    teacher_is_dir = args.teacher.startswith(LOCAL_DIR_PREFIX)
    weights = args.teacher_weights
    if weights is not None:
        if teacher_is_dir:
            raise TinyCLIPError("a local-dir teacher carries its own weights; drop --teacher-weights")
        if not Path(weights).is_file():
            raise TinyCLIPError(f"teacher weights {weights} not found; pass an existing .pt/.safetensors file")

    if teacher_is_dir:
        teacher, _ = load_open_clip_dir(args.teacher)
    elif weights is not None:
        try:
            teacher = open_clip.create_model(args.teacher, pretrained=weights)
        except Exception as exc:  # unreadable file, wrong keys or shapes: all a bad weights file
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise TinyCLIPError(f"cannot load teacher weights {weights} into {args.teacher} "
                                f"({type(exc).__name__}: {first}); pass a state dict of that model") from exc
    else:
        print(f"warning: no --teacher-weights; {args.teacher} is randomly initialised", file=sys.stderr)
        teacher = open_clip.create_model(args.teacher)
    teacher.eval()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report carries the warnings; printed below
        student, report = inherit_manual(teacher, student_cfg, spec)
    for note in report["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    extra = {"inherit": {"teacher": args.teacher, "teacher_weights": weights, "student": args.student,
                         **{k: v for k, v in report.items() if k != "student_config"}}}
    out = save_open_clip_dir(student, student_cfg, args.out, extra=extra)
    summary = {
        "teacher": args.teacher,
        "teacher_weights": weights,
        "student": args.student,
        "out": str(out),
        "depth_rule": spec.depth_rule,
        "width_rule": spec.width_rule,
        "inherited_fraction": report["inherited_fraction"],
        "layer_map": report["layer_map"],
        "student_parameters": report["student_parameters"],
        "teacher_parameters": report["teacher_parameters"],
        "warnings": report["warnings"],
    }
    print(f"inherited {args.student} from {args.teacher} into {out}")
    print(json.dumps(summary))
    return 0
