"""Table 2 of this reproduction: the LAION-400M comparison of the paper's section 4.2 (DESIGN.md §7).

Three parts, side by side in ``notebooks/table2.ipynb``:

(a) :func:`published_rows` — the published reference (official model zoo), each number with its source;
(b) :func:`paper_scale_rows` — what any machine reproduces exactly at paper scale: the architectures built by
    this project's inheritance code from ViT-B/32 and RN50 (manual chain by :mod:`tinyclip.inherit.manual`, auto
    chain shapes by :func:`tinyclip.inherit.auto.official_split_chain`), their parameters and MACs, and measured
    throughput as a ratio to the teacher;
(c) the mini-scale analogue (teacher and students trained here) — filled from finished runs by the notebook.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from . import zoo
from .inherit.auto import official_split_chain
from .inherit.manual import inherit_manual
from .pruned import PrunedCLIP
from .recipe import load_recipe, resolve_device, resolve_recipe, teacher_recipe
from .runs import Run, project_root
from .throughput import throughput_table

RECIPES_DIR = project_root() / "recipes"

UNREPRODUCIBLE = [
    {"model": "TinyCLIP DaViT-5M (from Florence DaViT-D3)",
     "reason": "neither the Florence DaViT-D3 teacher nor its FLD-900M training data is public"},
]

# Table 2 rows: (row label, family teacher, how the architecture is made here)
MANUAL_CHAINS = {
    "ViT-B-32": ["TinyCLIP-ViT-61M-32-Text-29M", "TinyCLIP-ViT-40M-32-Text-19M"],
    "RN50": ["TinyCLIP-ResNet-30M-Text-29M", "TinyCLIP-ResNet-19M-Text-19M"],
}
AUTO_NAMES = {0.25: "TinyCLIP-auto-ViT-63M-32-Text-31M", 0.50: "TinyCLIP-auto-ViT-45M-32-Text-18M",
              0.75: "TinyCLIP-auto-ViT-22M-32-Text-10M"}


def published_rows() -> list[dict[str, Any]]:
    """Part (a): the official model zoo's LAION-400M rows (manual and auto), with their sources."""
    rows = []
    for name, ref in {**zoo.REFERENCES, **zoo.AUTO_REFERENCES}.items():
        if ref.pretrain != "LAION-400M":
            continue
        rows.append({"model": name, "inheritance": ref.inheritance, "params_image_m": ref.params_vision_m,
                     "params_text_m": ref.params_text_m, "macs_g": ref.macs_g,
                     "throughput_pairs_s": ref.throughput_pairs_s, "imagenet_top1": ref.imagenet_top1,
                     "source": ref.source})
    return rows


def paper_scale_models() -> dict[str, tuple[str, str, nn.Module]]:
    """Every Table 2 architecture built the way this project builds it, on the meta device (shapes only):
    ``{row name: (teacher, inheritance, model)}``."""
    models: dict[str, tuple[str, str, nn.Module]] = {}
    for teacher_name, chain in MANUAL_CHAINS.items():
        parent = zoo.build_shape_model(teacher_name)
        models[teacher_name] = (teacher_name, "teacher", parent)
        for name in chain:
            parent, _ = inherit_manual(parent, name)
            models[name] = (teacher_name, "manual", parent)
    for sparsity, config in official_split_chain(models["ViT-B-32"][2]):
        with torch.device("meta"):
            models[AUTO_NAMES[sparsity]] = ("ViT-B-32", "auto (official split)", PrunedCLIP(config))
    return models


def _random_copy(name: str, model: nn.Module) -> nn.Module:
    """A randomly initialised CPU model of the same architecture (throughput does not depend on the weights)."""
    if isinstance(model, PrunedCLIP):
        return PrunedCLIP(model.config)
    return open_clip.CLIP(**zoo.model_config(name))


def paper_scale_rows(measure_throughput: bool = True, batch_size: int = 32, rounds: int = 3,
                     device: str = "cpu") -> list[dict[str, Any]]:
    """Part (b): parameters (paper convention), MACs and throughput ratio to the family's teacher."""
    models = paper_scale_models()
    references = {**zoo.REFERENCES, **zoo.AUTO_REFERENCES}
    speed: dict[str, dict[str, float]] = {}
    if measure_throughput:
        for teacher_name in MANUAL_CHAINS:
            family = {n: _random_copy(n, m) for n, (t, _, m) in models.items() if t == teacher_name}
            speed.update(throughput_table(family, batch_size=batch_size, rounds=rounds, device=device))
            del family
    rows = []
    for name, (teacher_name, how, model) in models.items():
        params = zoo.count_params(model)
        macs = zoo.count_macs(model)["total"] / 1e9
        teacher_macs = zoo.count_macs(models[teacher_name][2])["total"] / 1e9
        ref = references.get(name)
        row = {"model": name, "teacher": teacher_name, "built_by": how,
               "params_image_m": params["vision"] / 1e6, "params_text_m": params["text"] / 1e6,
               "params_total_m": params["total"] / 1e6,
               "published_params": f"{ref.params_vision_m:g}+{ref.params_text_m:g}" if ref else None,
               "macs_g": macs, "published_macs_g": ref.macs_g if ref else None,
               "macs_delta_pct": 100 * (macs - ref.macs_g) / ref.macs_g if ref and ref.macs_g else None,
               "macs_ratio_vs_teacher": teacher_macs / macs}
        if speed:
            row["pairs_per_s"] = speed[name]["pairs_per_s"]
            row["speedup_vs_teacher"] = speed[name]["pairs_per_s"] / speed[teacher_name]["pairs_per_s"]
            if ref and ref.throughput_pairs_s and name != teacher_name:
                row["published_throughput_pairs_s"] = ref.throughput_pairs_s
        rows.append(row)
    return rows


def recipe_summaries(path: str | Path, seed: int | None = None) -> list[dict[str, Any]] | None:
    """The FINISHED summaries of a recipe's teacher (if it trains one) and stages, found by their run hashes
    without training anything; ``None`` while any of them is missing."""
    recipe = load_recipe(path, seed=seed)
    device = resolve_device(recipe.device)
    recipes = ([teacher_recipe(recipe)] if recipe.teacher.kind == "train" else []) + [recipe]
    summaries = []
    for part in recipes:
        for config, stage in zip(resolve_recipe(part, device=device, world_size=1), part.stages):
            run = Run(config)
            if not run.is_finished():
                return None
            summaries.append({**run.summary(), "recipe": part.name, "stage_name": stage.name,
                              "init": stage.init, "kind": stage.kind})
    return summaries


def _metric_columns(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {}
    if "fmnist" in metrics:
        out["fmnist_prompted_acc1"] = 100 * metrics["fmnist"]["acc1"]
    for task in ("tux", "openmoji"):
        if task in metrics:
            out[f"{task}_i2t_r1"] = 100 * metrics[task]["text_retrieval_recall@1"]
            out[f"{task}_t2i_r1"] = 100 * metrics[task]["image_retrieval_recall@1"]
    return out


def mini_rows(profile: str = "mini", seed: int | None = None) -> list[dict[str, Any]] | None:
    """Part (c): teacher and students of the profile's finished manual / from-scratch / auto recipes (one row per
    run, teacher first, each with its size relative to the teacher), or ``None`` when no recipe has finished."""
    rows: dict[str, dict[str, Any]] = {}
    for kind in ("manual", "scratch", "auto"):
        path = RECIPES_DIR / f"{profile}_{kind}.yaml"
        summaries = recipe_summaries(path, seed) if path.is_file() else None
        for summary in summaries or []:
            label = "teacher" if summary["stage_name"] == "teacher" else f"{kind}: {summary['stage_name']}"
            rows.setdefault(summary["run"], {
                "row": label, "model": summary["student"], "init": summary["init"],
                "params_image_m": summary["params"]["vision"] / 1e6, "params_text_m": summary["params"]["text"] / 1e6,
                "params_total_m": summary["params"]["total"] / 1e6, "samples": summary["samples"],
                **_metric_columns(summary["metrics"]), "run": summary["run"]})
    if not rows:
        return None
    table = list(rows.values())
    teacher = next((r for r in table if r["row"] == "teacher"), None)
    for row in table:
        row["size_vs_teacher"] = row["params_total_m"] / teacher["params_total_m"] if teacher else None
    return table
