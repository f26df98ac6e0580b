"""Claim C4 (paper §3.2): the text tower is redundant in depth, the image tower in width.

Measured on the profile's teacher (no training beyond the teacher itself; :mod:`tinyclip.analysis`):

* layer similarity — linear CKA between every pair of layer outputs, per tower, on held-out retrieval images and
  captions;
* depth removal — each single block removed in turn, then the ``k`` least important blocks (ranked by their single
  removal's cost on the *selection* half of the evaluation items: the even-numbered ones);
* width removal — ``k / L`` of every layer's heads and FFN neurons removed, the lowest by weight magnitude, and at
  random as a control: the same block parameters as removing ``k`` of the ``L`` blocks;
* the learned allocation — what the automatic chain (``recipes/<profile>_auto.yaml``, ≥ 3 seeds) kept per layer
  and tower, and how consistent that is across seeds.

Every removal is scored on the *measurement* half (the odd-numbered items), which played no part in choosing what
to remove. C4's two comparisons, at ``k = L / 4`` blocks' worth of parameters: in the text tower, score after depth
removal minus score after width removal (claimed > 0); in the image tower, width minus depth (claimed > 0).
Reproduced when both intervals lie above zero. The intervals resample evaluation items only: there is one teacher
(a second teacher seed would cover the training noise; the budget does not allow one), so ``n_seeds`` is 1 and the
verdict rule's three-seed minimum does not apply to these untrained measurements.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import analysis, stats
from ..errors import TinyCLIPError
from .claims import claim_entry, compare
from .common import (METRICS, Arm, arm_summary, item_scores, load_run_model, recipe_path, recipe_summaries,
                     train_arms)

PRIMARY = "fmnist"
RANDOM_SEEDS = (0, 1, 2)
# "the claimed-redundant dimension" per tower: removing it should cost less than removing the other one
REDUNDANT = {"text": "depth", "vision": "width"}


def auto_arm(profile: str) -> Arm:
    """The automatic chain's last student, as Table 2 and the inheritance ablation train it (shared runs)."""
    from ..recipe import load_recipe

    path = recipe_path(profile, "auto")
    last = load_recipe(path).stages[-1].name
    return Arm("auto", "automatic inheritance (the recipe's own mask phase)", str(path), last)


def profile_teacher_run(profile: str) -> dict[str, Any] | None:
    """The finished run of the profile's teacher recipe (the model every measurement here is made on)."""
    summaries = recipe_summaries(recipe_path(profile, "teacher"))
    return None if summaries is None else summaries[-1]


def run(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, parallel: int = 2,
        threads: int | None = None) -> None:
    """Train what the study reads: the teacher and the automatic chain on every seed (finished runs reused)."""
    train_arms([auto_arm(profile)], seeds, parallel=parallel, threads=threads)


def load_teacher(summary: dict[str, Any]):
    """(teacher as a PrunedCLIP, eval preprocess, tokenizer, evaluation root) of a finished teacher run."""
    from ..pruned import to_pruned

    model, preprocess, tokenizer, eval_root = load_run_model(summary["run_dir"])
    return to_pruned(model).eval(), preprocess, tokenizer, eval_root


def _halves(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(selection, measurement) halves of per-item scores: even- and odd-numbered items."""
    return scores[0::2], scores[1::2]


def _params(model) -> int:
    from ..pruned import param_counts

    return int(param_counts(model)["total"])


def analyse(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, k_levels: Sequence[int] | None = None,
            random_seeds: Sequence[int] = RANDOM_SEEDS, cka_items: int = 1024, threads: int | None = None
            ) -> dict[str, Any]:
    """Layer similarity, depth and width removal on the teacher, the automatic chain's allocation, and C4."""
    import torch

    summary = profile_teacher_run(profile)
    if summary is None:
        raise TinyCLIPError(f"the {profile} teacher has not finished; run the study with train=True "
                            f"(make reproduce-redundancy PROFILE={profile})")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    teacher, preprocess, tokenizer, eval_root = load_teacher(summary)
    scorer = analysis.TowerScorer(teacher, preprocess, tokenizer, eval_root)
    metrics = (PRIMARY, "retrieval")
    base_items = scorer.score()
    full_params = _params(teacher)

    images, captions = scorer.retrieval_inputs(cka_items)
    similarity = {"vision": analysis.layer_similarity(teacher, "vision", images),
                  "text": analysis.layer_similarity(teacher, "text", captions)}

    def scores(items) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {m: _halves(item_scores(items, m)) for m in metrics}

    base = scores(base_items)
    rows: list[dict[str, Any]] = []       # one per removed model
    outcomes: dict[tuple, dict[str, np.ndarray]] = {}   # (tower, kind, k, seed) -> metric -> measurement scores

    def record(tower: str, kind: str, k: int, model, items, seed: int | None = None, layers=None) -> dict:
        sc = scores(items)
        outcomes[(tower, kind, k, seed)] = {m: sc[m][1] for m in metrics}
        row = {"tower": tower, "kind": kind, "k": k, "seed": seed, "layers": layers,
               "params_removed_m": (full_params - _params(model)) / 1e6}
        for m in metrics:
            row[m] = 100 * float(sc[m][1].mean())
            row[f"{m}_drop"] = 100 * float(base[m][1].mean() - sc[m][1].mean())
            row[f"{m}_selection_drop"] = 100 * float(base[m][0].mean() - sc[m][0].mean())
        rows.append(row)
        return row

    single: dict[str, list[dict]] = {}
    levels: dict[str, list[int]] = {}
    for tower in analysis.TOWERS:
        depth = analysis.depth(teacher, tower)
        levels[tower] = list(k_levels or range(1, depth // 2 + 1))
        single[tower] = []
        for layer in range(depth):
            model = analysis.without_layers(teacher, tower, [layer])
            single[tower].append(record(tower, "single layer", 1, model, scorer.score(model, tower), layers=[layer]))
        order = sorted(range(depth), key=lambda i: (single[tower][i][f"{PRIMARY}_selection_drop"], i))
        for k in levels[tower]:
            chosen = sorted(order[:k])
            model = analysis.without_layers(teacher, tower, chosen)
            record(tower, "depth", k, model, scorer.score(model, tower), layers=chosen)
            model = analysis.thinner(teacher, tower, k / depth, "magnitude")
            record(tower, "width", k, model, scorer.score(model, tower))
            for seed in random_seeds:
                model = analysis.thinner(teacher, tower, k / depth, "random", seed=seed)
                record(tower, "width (random)", k, model, scorer.score(model, tower), seed=seed)

    comparisons = []
    for tower in analysis.TOWERS:
        for k in levels[tower]:
            for m in metrics:
                depth_scores = {0: outcomes[(tower, "depth", k, None)][m]}
                width_scores = {0: outcomes[(tower, "width", k, None)][m]}
                a, b = (depth_scores, width_scores) if REDUNDANT[tower] == "depth" else (width_scores, depth_scores)
                comparisons.append({"claim": "C4", "tower": tower, "k": k, "metric": m,
                                    "a": REDUNDANT[tower], "b": "width" if REDUNDANT[tower] == "depth" else "depth",
                                    **compare(a, b, min_seeds=1)})

    headline_k = {t: max(1, len(single[t]) // 4) for t in analysis.TOWERS}
    primary = [c for c in comparisons if c["metric"] == PRIMARY and c["k"] == headline_k[c["tower"]]]
    head = min(primary, key=lambda c: c["estimate"])
    note = ("Score after removing the claimed-redundant dimension minus score after removing the other, at matched "
            "block parameters (k = L/4 blocks), on the measurement half of the items; " +
            "; ".join(f"{c['tower']} ({c['a']} − {c['b']}) {c['estimate']:+.2f} [{c['ci_low']:+.2f}, "
                      f"{c['ci_high']:+.2f}] {c['verdict']}" for c in primary) +
            ". Headline: the weaker tower. One teacher: the intervals resample evaluation items only.")
    claim = claim_entry("C4", verdict=stats.combine_verdicts([c["verdict"] for c in primary]), comparison=head,
                        metric=METRICS[PRIMARY] + ", measurement half", profile=profile, details=comparisons,
                        note=note)
    base_row = {m: 100 * float(base[m][1].mean()) for m in metrics}
    return {"teacher": summary, "compute": training_cost(profile, seeds), "params": full_params, "base": base_row, "similarity": similarity,
            "single": single, "rows": rows, "comparisons": comparisons, "headline_k": headline_k,
            "allocation": allocation(profile, seeds), "claims": [claim]}


def training_cost(profile: str, seeds: Sequence[int]) -> tuple[float, int]:
    """(training minutes, runs) behind the study: the teacher, and every stage of the finished automatic chains."""
    from .common import materialize

    teacher = profile_teacher_run(profile)
    minutes, runs = (teacher.get("train_s", 0.0) / 60, 1) if teacher else (0.0, 0)
    for seed in seeds:
        chain = recipe_summaries(materialize(auto_arm(profile)), seed) or []
        students = [s for s in chain if s["stage_name"] != "teacher"]
        minutes += sum(s.get("train_s", 0.0) for s in students) / 60
        runs += len(students)
    return minutes, runs


# ------------------------------------------------------------------------------------------- learned allocation
def allocation(profile: str, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
    """seed → :func:`tinyclip.pruned.pruned_architecture` of the automatic chain's last student (finished seeds)."""
    from ..pruned import pruned_architecture

    arm = auto_arm(profile)
    out = {}
    for seed in seeds:
        summary = arm_summary(arm, seed)
        if summary is not None:
            out[seed] = pruned_architecture(Path(summary["run_dir"]) / "model")
    return out


def allocation_rows(arch: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per seed and tower: what the learned masks kept of width and depth (shares of the teacher's, %)."""
    rows = []
    for seed, a in sorted(arch.items()):
        for tower in analysis.TOWERS:
            t = a[tower]
            layers = t["layers"]
            heads = sum(x["heads"] for x in layers) / max(1, sum(x["heads_original"] for x in layers))
            mlp = sum(x["mlp"] for x in layers) / max(1, sum(x["mlp_original"] for x in layers))
            rows.append({"seed": seed, "tower": tower, "hidden_kept": 100 * t["hidden"] / t["hidden_original"],
                         "heads_kept": 100 * heads, "neurons_kept": 100 * mlp,
                         "attn_layers_kept": sum(not x["attn_dropped"] for x in layers),
                         "ffn_layers_kept": sum(not x["mlp_dropped"] for x in layers), "layers": len(layers),
                         "params_m": t["params"] / 1e6})
    return rows


def allocation_consistency(arch: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Per tower: the mean over layers of the across-seed standard deviation of each layer's kept share of heads
    and neurons (percentage points; 0 = every seed kept the same amount in every layer)."""
    out = {}
    for tower in analysis.TOWERS:
        shares = []
        for a in arch.values():
            layers = a[tower]["layers"]
            shares.append([x["heads"] / max(1, x["heads_original"]) for x in layers] +
                          [x["mlp"] / max(1, x["mlp_original"]) for x in layers])
        out[tower] = 100 * float(np.std(np.array(shares), axis=0).mean()) if len(shares) > 1 else float("nan")
    return out
