"""Model zoo: the TinyCLIP architectures, their teachers and the mini/smoke families (paper §4.1, Table 2 columns).

Parameter counts follow the paper's convention (docs/sources.md §5): the vision tower is counted
complete; the text tower is counted *without* its token-embedding matrix, which is reported separately. MACs are
multiply-accumulates for one image at the model's resolution plus one text at its context length, counted with
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2).

Why the counting needs care: on CPU, ``nn.MultiheadAttention`` in eval/no-grad mode takes a fused fast path
(``_native_multi_head_attention``) and otherwise calls the fused ``_scaled_dot_product_flash_attention_for_cpu``
kernel; the counter sees neither, so it silently drops the attention matmuls (measured for ViT-40M/32: 2.79 G with
the fast path, 3.42 G without it, 3.49 G with the attention matmuls). :func:`count_macs` therefore turns the fast
path off and teaches the counter the CPU fused kernel. By default models are built on the ``meta`` device (shapes
only, no memory, no init cost), where attention runs the composite path and every matmul is visible.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import open_clip
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import TinyCLIPError
from .pruned import param_counts

# --------------------------------------------------------------------------------------------------------------
# Published reference values. Every entry names its source (docs/sources.md §2-4): "zoo" = the official
# model zoo table of microsoft/Cream TinyCLIP/README.md (and the HF model cards); "zoo-early" = the first README
# version (Sep 2023), the only one with a params column, printed as "<image>+<text>" in millions.
# --------------------------------------------------------------------------------------------------------------
SOURCE_ZOO = "microsoft/Cream TinyCLIP/README.md model zoo (docs/sources.md §2)"
SOURCE_ZOO_EARLY = "earliest Cream TinyCLIP README, params column (docs/sources.md §3)"
SOURCE_NAME = "parameter counts encoded in the model name (paper convention, docs/sources.md §4-5)"


@dataclass(frozen=True)
class Reference:
    params_vision_m: float | None = None
    params_text_m: float | None = None
    macs_g: float | None = None
    throughput_pairs_s: float | None = None
    imagenet_top1: float | None = None
    pretrain: str | None = None
    inheritance: str | None = None
    source: str = ""


REFERENCES: dict[str, Reference] = {
    "TinyCLIP-ViT-39M-16-Text-19M": Reference(39, 19, 9.5, 1469, 63.5, "YFCC-15M", "manual",
                                              f"{SOURCE_ZOO}; params: {SOURCE_NAME}"),
    "TinyCLIP-ViT-8M-16-Text-3M": Reference(8, 3, 2.0, 4150, 41.1, "YFCC-15M", "manual",
                                            f"{SOURCE_ZOO}; params: {SOURCE_NAME}"),
    "TinyCLIP-ResNet-30M-Text-29M": Reference(30, 29, 6.9, 1811, 59.1, "LAION-400M", "manual",
                                              f"{SOURCE_ZOO}; params: {SOURCE_ZOO_EARLY}"),
    "TinyCLIP-ResNet-19M-Text-19M": Reference(19, 19, 4.4, 3024, 56.4, "LAION-400M", "manual",
                                              f"{SOURCE_ZOO} (56.3 in {SOURCE_ZOO_EARLY}); params: same"),
    "TinyCLIP-ViT-61M-32-Text-29M": Reference(61, 29, 5.3, 3191, 62.4, "LAION-400M", "manual",
                                              f"{SOURCE_ZOO}; params: {SOURCE_ZOO_EARLY}"),
    "TinyCLIP-ViT-40M-32-Text-19M": Reference(40, 19, 3.5, 4641, 59.8, "LAION-400M", "manual",
                                              f"{SOURCE_ZOO}; params: {SOURCE_ZOO_EARLY}"),
}

# The automatically inherited Table 2 rows have no fixed config (their shapes are learned); their published
# figures are kept here for the Table 2 report.
AUTO_REFERENCES: dict[str, Reference] = {
    "TinyCLIP-auto-ViT-63M-32-Text-31M": Reference(63, 31, 5.6, 2905, 63.9, "LAION-400M", "auto",
                                                   f"{SOURCE_ZOO}; params: {SOURCE_ZOO_EARLY}"),
    "TinyCLIP-auto-ViT-45M-32-Text-18M": Reference(45, 18, 3.7, 3682, 61.4, "LAION-400M", "auto",
                                                   f"{SOURCE_ZOO}; params: {SOURCE_ZOO_EARLY}"),
    "TinyCLIP-auto-ViT-22M-32-Text-10M": Reference(22, 10, 1.9, 5504, 53.7, "LAION-400M", "auto",
                                                   f"{SOURCE_ZOO}; params: {SOURCE_ZOO_EARLY}"),
}

PAPER_MODELS = list(REFERENCES)
TEACHERS = ["ViT-B-32", "ViT-B-16", "RN50"]
# S75 / S50 / S25: the manual chain of paper §3.3 at small size (recipes/mini_manual.yaml, mini_multistage_*.yaml)
MINI_MODELS = ["TinyCLIP-mini-teacher", "TinyCLIP-mini-S75", "TinyCLIP-mini-S50", "TinyCLIP-mini-S25"]
SMOKE_MODELS = ["TinyCLIP-smoke-teacher", "TinyCLIP-smoke-S75", "TinyCLIP-smoke-S50", "TinyCLIP-smoke-S25"]
ROLES = {**{n: "tinyclip" for n in PAPER_MODELS}, **{n: "teacher" for n in TEACHERS},
         **{n: "mini" for n in MINI_MODELS}, **{n: "smoke" for n in SMOKE_MODELS}}


def model_config(name: str) -> dict[str, Any]:
    """The open_clip config dict of a registered model, or a TinyCLIPError naming the known ones."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise TinyCLIPError(f"unknown model {name!r}; `tinyclip models` lists the project's models "
                            "and open_clip.list_models() every registered config")
    return cfg


def build_shape_model(name_or_cfg: str | dict[str, Any]) -> open_clip.CLIP:
    """An open_clip CLIP on the ``meta`` device: real module structure and shapes, no weights, built instantly."""
    cfg = model_config(name_or_cfg) if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    cfg.pop("custom_text", None)
    with torch.device("meta"):
        return open_clip.CLIP(**cfg)


# ----------------------------------------------------------------------------------------------- parameters
def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters under the paper's convention: ``vision`` = the whole visual tower, ``text`` = the text tower
    without its token embedding, ``total`` = their sum, ``token_embedding`` reported apart. The logit scale (one
    scalar) is in neither. Works for open_clip ``CLIP`` and for pruned students (:mod:`tinyclip.pruned`)."""
    if getattr(model, "visual", None) is None:
        raise TinyCLIPError(f"{type(model).__name__} has no .visual tower; expected an open_clip-style CLIP")
    return param_counts(model)


# ----------------------------------------------------------------------------------------------- MACs
def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # The CPU fused SDPA kernel computes the same two matmuls as the CUDA kernels the counter already knows.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@contextlib.contextmanager
def _attention_visible_to_counter() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _image_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def count_macs(model: nn.Module, image_size: tuple[int, int] | None = None,
               context_length: int | None = None) -> dict[str, float]:
    """MACs of ``encode_image`` on one image and ``encode_text`` on one full-length text (attention included).

    Works for real and ``meta`` models; returns ``{"image": ..., "text": ..., "total": ...}`` in MACs.
    """
    device = next(model.parameters()).device
    height, width = image_size or _image_size(model)
    context = context_length or int(model.context_length)
    image = torch.zeros(1, 3, height, width, device=device)
    text = torch.zeros(1, context, dtype=torch.long, device=device)
    text[0, -1] = 1  # an end-of-text position for argmax pooling; values do not change the count
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}
    was_training = model.training
    model.eval()
    counts = {}
    try:
        with _attention_visible_to_counter(), torch.no_grad():
            for part, run in (("image", lambda: model.encode_image(image)), ("text", lambda: model.encode_text(text))):
                with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
                    run()
                counts[part] = counter.get_total_flops() / 2
    finally:
        model.train(was_training)
    counts["total"] = counts["image"] + counts["text"]
    return counts


# ----------------------------------------------------------------------------------------------- the zoo table
@dataclass
class ZooEntry:
    name: str
    role: str
    architecture: str
    params_vision_m: float
    params_text_m: float
    params_token_embedding_m: float
    params_total_m: float
    macs_g: float
    macs_image_g: float
    macs_text_g: float
    image_size: int
    context_length: int
    reference: dict[str, Any] | None = field(default=None)


def describe(name: str) -> ZooEntry:
    """Parameters, MACs and the published reference of one registered model (built on the meta device)."""
    cfg = model_config(name)
    model = build_shape_model(cfg)
    params = count_params(model)
    macs = count_macs(model)
    vision_cfg = cfg["vision_cfg"]
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        arch = f"ModifiedResNet{list(vision_cfg['layers'])} w{vision_cfg['width']}"
    else:
        heads = vision_cfg["width"] // vision_cfg.get("head_width", 64)
        arch = (f"ViT L{vision_cfg['layers']} w{vision_cfg['width']} h{heads} p{vision_cfg['patch_size']}")
    text_cfg = cfg["text_cfg"]
    arch += f" | text L{text_cfg['layers']} w{text_cfg['width']} h{text_cfg['heads']} | embed {cfg['embed_dim']}"
    ref = REFERENCES.get(name)
    return ZooEntry(
        name=name, role=ROLES.get(name, "other"), architecture=arch,
        params_vision_m=params["vision"] / 1e6, params_text_m=params["text"] / 1e6,
        params_token_embedding_m=params["token_embedding"] / 1e6,
        params_total_m=(params["vision"] + params["text"]) / 1e6,
        macs_g=macs["total"] / 1e9, macs_image_g=macs["image"] / 1e9, macs_text_g=macs["text"] / 1e9,
        image_size=_image_size(model)[0], context_length=int(model.context_length),
        reference=asdict(ref) if ref else None,
    )


def zoo_table(names: list[str] | None = None) -> list[ZooEntry]:
    return [describe(n) for n in (names or PAPER_MODELS + TEACHERS + MINI_MODELS + SMOKE_MODELS)]


def _format_table(entries: list[ZooEntry]) -> str:
    def fmt(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    header = (f"{'model':32} {'role':9} {'vision M':>9} {'text M':>8} {'tok-emb M':>9} {'MACs G':>8} "
              f"{'pub V+T M':>10} {'pub MACs':>9} {'Δ MACs':>7}")
    lines = [header, "-" * len(header)]
    for e in entries:
        ref = e.reference or {}
        pub_params = (f"{ref['params_vision_m']:g}+{ref['params_text_m']:g}" if ref.get("params_vision_m") else "–")
        pub_macs = ref.get("macs_g")
        delta = f"{100 * (e.macs_g - pub_macs) / pub_macs:+.1f}%" if pub_macs else "–"
        lines.append(f"{e.name:32} {e.role:9} {e.params_vision_m:9.2f} {e.params_text_m:8.2f} "
                     f"{e.params_token_embedding_m:9.2f} {fmt(e.macs_g, 3):>8} {pub_params:>10} "
                     f"{fmt(pub_macs, 1):>9} {delta:>7}")
    lines.append("params: vision tower complete, text tower without token embedding (paper convention); "
                 "MACs: one image + one full-context text, attention matmuls included.")
    return "\n".join(lines)


def _cmd_models(args: argparse.Namespace) -> int:
    entries = zoo_table(args.names or None)
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
    else:
        print(_format_table(entries))
    return 0
