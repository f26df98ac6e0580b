"""Table 2 of this reproduction: the LAION-400M comparison of the paper's section 4.2 (docs/design.md §6).

Three parts, side by side in ``notebooks/table2.ipynb``:

(a) :func:`published_rows` — the published reference (official model zoo), each number with its source;
(b) :func:`paper_scale_rows` — what any machine reproduces exactly at paper scale: the architectures built by
    this project's inheritance code from ViT-B/32 and RN50 (manual chain by :mod:`tinyclip.inherit.manual`, auto
    chain shapes by :func:`tinyclip.inherit.auto.official_split_chain`), their parameters and MACs, and measured
    throughput as a ratio to the teacher;
(c) the mini-scale analogue (teacher and students trained here) — filled from finished runs by the notebook.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from .. import zoo
from ..inherit.auto import official_split_chain
from ..inherit.manual import inherit_manual
from ..pruned import PrunedCLIP
from ..recipe import load_recipe
from ..runs import project_root
from ..throughput import throughput_table
from .common import allocation_columns, recipe_summaries

RECIPES_DIR = project_root() / "recipes"
TABLE2_RECIPES = ("manual", "scratch", "auto")   # part (c): recipes/<profile>_<kind>.yaml

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


def _metric_columns(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {}
    if "fmnist" in metrics:
        out["fmnist_prompted_acc1"] = 100 * metrics["fmnist"]["acc1"]
    for task in ("tux", "openmoji"):
        if task in metrics:
            out[f"{task}_i2t_r1"] = 100 * metrics[task]["text_retrieval_recall@1"]
            out[f"{task}_t2i_r1"] = 100 * metrics[task]["image_retrieval_recall@1"]
    return out


METRICS = ("fmnist_prompted_acc1", "tux_i2t_r1", "tux_t2i_r1", "openmoji_i2t_r1", "openmoji_t2i_r1")


def mini_rows(profile: str = "mini", seed: int | None = None) -> list[dict[str, Any]] | None:
    """Part (c): teacher and students of the profile's finished manual / from-scratch / auto recipes (one row per
    run, teacher first, each with its size and every metric relative to the teacher, and its training time), or
    ``None`` when no recipe has finished."""
    rows: dict[str, dict[str, Any]] = {}
    for kind in TABLE2_RECIPES:
        path = RECIPES_DIR / f"{profile}_{kind}.yaml"
        summaries = recipe_summaries(path, seed) if path.is_file() else None
        for summary in summaries or []:
            label = "teacher" if summary["stage_name"] == "teacher" else f"{kind}: {summary['stage_name']}"
            rows.setdefault(summary["run"], {
                "row": label, "model": summary["student"], "init": summary["init"],
                "params_image_m": summary["params"]["vision"] / 1e6, "params_text_m": summary["params"]["text"] / 1e6,
                "params_total_m": summary["params"]["total"] / 1e6, "samples": summary["samples"],
                "train_min": summary.get("train_s", 0.0) / 60, **_metric_columns(summary["metrics"]),
                "run": summary["run"]})
    if not rows:
        return None
    table = list(rows.values())
    teacher = next((r for r in table if r["row"] == "teacher"), None)
    for row in table:
        row["size_vs_teacher"] = row["params_total_m"] / teacher["params_total_m"] if teacher else None
        for metric in METRICS:
            if teacher and metric in row and teacher.get(metric):
                row[f"{metric}_vs_teacher"] = row[metric] / teacher[metric]
    return table


def mini_findings(rows: list[dict[str, Any]], metric: str = "fmnist_prompted_acc1") -> list[str]:
    """Plain sentences stating part (c)'s results on ``metric`` (from :func:`mini_rows`): what the ≈50 % students
    keep of the teacher, inheritance vs the from-scratch student (claim C2), automatic vs manual (claim C3)."""
    by_row = {r["row"]: r for r in rows}
    teacher = by_row.get("teacher")
    if teacher is None or metric not in teacher:
        return []
    half = [r for r in rows if r["row"] != "teacher" and r.get("size_vs_teacher") and r["size_vs_teacher"] < 0.6]
    out = [f"{r['row']} ({r['params_total_m']:.2f} M, {100 * r['size_vs_teacher']:.0f} % of the teacher) keeps "
           f"{100 * r[metric] / teacher[metric]:.1f} % of the teacher's score ({r[metric]:.1f} vs {teacher[metric]:.1f})."
           for r in half if metric in r]
    manual = next((r for r in half if r["row"].startswith("manual")), None)
    scratch = next((r for r in half if r["row"].startswith("scratch")), None)
    auto = next((r for r in half if r["row"].startswith("auto")), None)
    if manual and scratch:
        out.append(f"Inheritance vs random initialisation (C2): {manual[metric] - scratch[metric]:+.1f} points for the "
                   f"inherited student, the from-scratch one trained on {scratch['samples'] / manual['samples']:.0f}x "
                   "its stage's pairs.")
    if manual and auto:
        out.append(f"Automatic vs manual inheritance (C3): {auto[metric] - manual[metric]:+.1f} points for the auto "
                   f"student ({auto['params_total_m']:.2f} M vs {manual['params_total_m']:.2f} M).")
    return out


def auto_stage_rows(profile: str = "mini", seed: int | None = None) -> list[dict[str, Any]] | None:
    """The auto chain's stages (paper §3.2): target / achieved sparsity against the original teacher, what CoFi's
    per-group rounding of the same masks would have given, and the per-tower allocation (hidden width, heads,
    FFN neurons and sub-layers kept, as a share of the teacher's), or ``None`` before the recipe finished."""
    path = RECIPES_DIR / f"{profile}_auto.yaml"
    summaries = recipe_summaries(path, seed) if path.is_file() else None
    if not summaries:
        return None
    rows = []
    for summary in summaries:
        if summary.get("kind") != "auto":
            continue
        auto, arch = summary["auto"], summary["architecture"]
        row = {"stage": summary["stage_name"], "target_sparsity": auto["target_sparsity"],
               "achieved_sparsity": auto["achieved_sparsity"], "expected_sparsity_at_prune": auto["expected_sparsity"],
               "cofi_rounding_sparsity": auto.get("cofi_sparsity"), "params_m": auto["params"] / 1e6}
        rows.append({**row, **allocation_columns(arch)})
    return rows


def teacher_routes(profile: str = "mini", seed: int | None = None) -> list[dict[str, Any]]:
    """The teacher routes of docs/data.md §3 with what each reached: the LiT teacher (pretrained PyPI towers +
    trained heads), the mini teacher distilled from it (``{profile}_teacher.yaml``) and the same teacher trained
    from scratch (``{profile}_teacher_scratch.yaml``); rows only for what has been built or finished."""
    from ..lit import default_out_dir

    rows = []
    recipe = load_recipe(RECIPES_DIR / f"{profile}_teacher.yaml", seed=seed) \
        if (RECIPES_DIR / f"{profile}_teacher.yaml").is_file() else None
    if recipe is not None and recipe.teacher.kind == "lit":
        summary_path = default_out_dir(profile, recipe.teacher.lit["image_size"]) / "summary.json"
        if summary_path.is_file():
            lit = json.loads(summary_path.read_text())
            if lit.get("eval"):
                rows.append({"route": f"LiT teacher ({lit['towers']}, {lit['image_size']} px; frozen towers)",
                             "model": "LiT", **_metric_columns(lit["eval"])})
    for name, route in ((f"{profile}_teacher.yaml", "mini teacher: contrastive + affinity mimicking of LiT"),
                        (f"{profile}_teacher_scratch.yaml", "mini teacher: contrastive only (from scratch)")):
        path = RECIPES_DIR / name
        summaries = recipe_summaries(path, seed) if path.is_file() else None
        if summaries:
            s = summaries[-1]
            rows.append({"route": route, "model": s["student"], "samples": s["samples"],
                         "train_min": s.get("train_s", 0.0) / 60, **_metric_columns(s["metrics"]), "run": s["run"]})
    return rows


# ------------------------------------------------------------------------------------------- seeded part (c)
C8_MARGIN = 0.95   # "comparable": the student keeps at least 95 % of the teacher's score
SEEDS = (0, 1, 2)


def student_arms(profile: str = "mini") -> list:
    """Part (c)'s students as study arms (one per stage of the manual, from-scratch and auto recipes)."""
    from .common import Arm

    arms = []
    for kind in TABLE2_RECIPES:
        path = RECIPES_DIR / f"{profile}_{kind}.yaml"
        if path.is_file():
            for stage in load_recipe(path).stages:
                arms.append(Arm(f"{kind}:{stage.name}", f"{kind}: {stage.name}", str(path), stage.name))
    return arms


def train_students(profile: str = "mini", seeds=SEEDS, *, parallel: int = 2, threads: int | None = None) -> None:
    """Train the teacher, then every Table 2 recipe on every seed (finished runs are reused)."""
    from .common import train_arms

    train_arms(student_arms(profile), seeds, parallel=parallel, threads=threads)


def seeded_analysis(profile: str = "mini", seeds=SEEDS) -> dict[str, Any] | None:
    """Teacher and students over seeds: scores with intervals, every student's ratio to the teacher (fmnist and
    retrieval) with its interval, and the C8 claim entry (manual S50, Fashion-MNIST, margin 95 %)."""
    from .claims import claim_entry, compare
    from .common import METRICS, arm_outcomes, score_rows, teacher_outcomes

    arms = student_arms(profile)
    if not arms:
        return None
    rows = score_rows(arms, seeds, metrics=("fmnist", "retrieval", "tux", "openmoji"), teacher=arms[0])
    ratios = []
    for arm in arms:
        for metric in ("fmnist", "retrieval"):
            student, teacher = arm_outcomes(arm, seeds, metric), teacher_outcomes(arm, metric)
            if student and teacher:
                ratios.append({"claim": "C8", "a": arm.key, "b": "teacher", "metric": metric,
                               **compare(student, teacher, kind="ratio", threshold=C8_MARGIN, shared_b=True)})
    head = next((r for r in ratios if r["a"].startswith("manual") and r["metric"] == "fmnist"
                 and r["a"].endswith(arms_last_manual(arms))), None)
    claims = []
    if head is not None:
        others = "; ".join(f"{r['a']} {r['metric']} {r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                           f"{r['verdict']}" for r in ratios if r is not head)
        claims.append(claim_entry("C8", verdict=head["verdict"], comparison=head, metric=METRICS["fmnist"],
                                  profile=profile, details=ratios,
                                  note=f"Manual S50 / teacher; reproduced when the whole interval is ≥ {C8_MARGIN}. "
                                       f"Other students and metrics: {others}."))
    return {"rows": rows, "ratios": ratios, "claims": claims}


def arms_last_manual(arms) -> str:
    manual = [a for a in arms if a.key.startswith("manual")]
    return manual[-1].stage if manual else ""


def c9_claim(paper_rows: list[dict[str, Any]], profile: str = "mini", params_tol_m: float = 1.0,
             macs_tol_pct: float = 5.0) -> dict[str, Any]:
    """C9 from part (b): the manual TinyCLIP architectures built here (exact, by the inheritance code) against the
    published parameters (image + text, M, printed as integers) and MACs; reproduced when every tower is within
    ``params_tol_m`` and every MACs figure within ``macs_tol_pct``. The auto rows are uniform-ratio stand-ins for
    learned shapes and are reported, not judged."""
    from .claims import claim_entry

    judged, details = [], []
    for row in paper_rows:
        if row["built_by"] == "teacher" or not row.get("published_params"):
            continue
        image, text = (float(x) for x in row["published_params"].split("+"))
        d_params = max(abs(row["params_image_m"] - image), abs(row["params_text_m"] - text))
        d_macs = abs(row["macs_delta_pct"]) if row.get("macs_delta_pct") is not None else None
        item = {"model": row["model"], "built_by": row["built_by"], "max_params_delta_m": d_params,
                "macs_delta_pct": d_macs}
        details.append(item)
        if row["built_by"] == "manual":
            judged.append(item)
    ok = all(i["max_params_delta_m"] <= params_tol_m and (i["macs_delta_pct"] is None
                                                         or i["macs_delta_pct"] <= macs_tol_pct) for i in judged)
    worst_macs = max((i["macs_delta_pct"] for i in judged if i["macs_delta_pct"] is not None), default=None)
    worst_params = max((i["max_params_delta_m"] for i in judged), default=None)
    entry = claim_entry("C9", verdict="reproduced" if judged and ok else "not reproduced" if judged else "inconclusive",
                        comparison=None, metric="parameters (M, per tower) and MACs (%) against the published figures",
                        profile=profile, details=details,
                        note=f"Deterministic (no seeds): largest tower deviation {worst_params:.2f} M (tolerance "
                             f"{params_tol_m} M: published counts are rounded to integers), largest MACs deviation "
                             f"{worst_macs:.1f} % (tolerance {macs_tol_pct} %), over the manual architectures.")
    entry["effect"] = worst_macs
    return entry


# ------------------------------------------------------------------------------------------- the whole job


def table2_recipes(profile: str) -> list[Path]:
    """The recipes behind part (c) for a profile (those that exist): manual chain, from-scratch, auto chain."""
    return [p for p in (RECIPES_DIR / f"{profile}_{kind}.yaml" for kind in TABLE2_RECIPES) if p.is_file()]


def reproduce(profile: str = "mini", *, seeds=SEEDS, parallel: int | None = None, train: bool = True) -> Path:
    """``make reproduce-table2``: build the profile's data set, train its teacher (alone, every core) and its
    Table 2 recipes (manual chain, from-scratch student, auto chain) on every seed, side by side (finished runs
    are reused, interrupted ones resume), then render ``reports/table2.html``. The paper profile trains nothing
    here (its data and teacher are the user's: run its recipes with torchrun) and renders parts (a) and (b)."""
    import sys

    if train and profile != "paper":
        from ..data.build import build

        build(profile)
        train_students(profile, seeds, parallel=parallel or 2)
    elif profile == "paper":
        print("paper profile: part (c) reads finished runs of recipes/paper_*.yaml (train them with torchrun on "
              "GPUs with LAION/YFCC shards and a ViT-B/32 checkpoint); rendering parts (a) and (b)", file=sys.stderr)
    from ..report import render

    return render("table2", profile, {"seeds": list(seeds)})


def _cmd_reproduce(args) -> int:
    seeds = tuple(args.seeds) if getattr(args, "seeds", None) else SEEDS
    out = reproduce(args.profile, seeds=seeds, parallel=args.parallel, train=not args.no_train)
    print(json.dumps({"report": str(out), "profile": args.profile}))
    return 0

