"""Claim C7 (the paper's abstract; the figure or table behind it was not readable here, docs/sources.md §1): a
student that inherits the teacher's weights reaches a given accuracy 1.4–7.8× sooner than the same architecture
trained from scratch.

Design. Two arms of one student, S50, distilled from the mini teacher by affinity mimicking with one recipe
(``recipes/<profile>_s50.yaml``) on the same seeds, data order and evaluation items; only the initialisation
differs:

* ``inherited`` — manual weight inheritance straight from the teacher (the recipe as it is);
* ``scratch`` — random initialisation (``init: random``).

Both train for the same budget with the same learning-rate schedule (warm-up, cosine): :data:`LENGTH` × the
from-scratch recipe's steps (mini: 2 × 312 = 624 steps, 160 k samples): twice the budget at which C2 compares the
arms, so that the from-scratch curve can approach its plateau. Estimated
on the 2-core CPU, two runs side by side: 624 steps ≈ 32 min inherited and ≈ 42 min from scratch (the measured
3.1 and 4.0 s per step of the 156- and 312-step runs), plus 12 extra evaluations of ≈ 40 s each per run, so
3 seeds take ≈ 270 run-minutes ≈ 2¼ h of wall time once the teacher exists (``budget_scale=0.75``: ≈ 1¾ h).
Each run is evaluated before its first step, then every budget / :data:`POINTS` steps and at the end (recipe
``eval.every``; :mod:`tinyclip.curve` keeps per-item outcomes at every point), so every point can be resampled
over seeds and items.

Measure. At each target score — a fraction of the from-scratch arm's final score (:data:`FRACTIONS`) — the
speed-up is samples(scratch) / samples(inherited) to first reach it, read off each arm's mean curve with the
curve straight between evaluation points (:func:`tinyclip.stats.matched_speedup`). The 95 % interval is the
paired two-level bootstrap (seeds, then items within each seed, the same draw for both arms and every point); the
target follows each replicate's from-scratch final score. An arm that never reaches a target within the budget
is given the budget: the speed-up is then a bound and is reported as one.

Headline target: the from-scratch arm's own final score (fraction 1.0), i.e. "how much sooner does inheritance
get where training from scratch gets with the whole budget" — the reading of the claim that needs no choice of
level. Verdict on Fashion-MNIST (the primary metric): reproduced when the speed-up interval at the headline lies
wholly above 1 (inheritance faster), not reproduced when wholly below 1, inconclusive otherwise (and with fewer
than 3 seeds). Where the estimate falls relative to the paper's 1.4–7.8× is reported beside the verdict.

Caveats the notebook states: points inside one cosine schedule are not the ends of shorter runs (each would have
annealed), so a curve understates what a run of that length reaches — for both arms alike; and a straight line
between points lies below a concave curve, so a crossing is placed late, most for the fast arm when it crosses
within the first interval.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .. import stats
from ..curve import read_curve
from ..errors import TinyCLIPError
from ..recipe import load_recipe
from .claims import MIN_SEEDS, claim_entry
from .common import METRICS, Arm, arm_summary, item_scores, recipe_path, score_rows, train_arms

LENGTH = 2.0                  # the budget, in units of the from-scratch recipe's steps
POINTS = 12                   # evaluation points after the start: every budget / POINTS steps
FRACTIONS = (0.5, 0.75, 0.9, 0.95, 1.0)
HEADLINE = 1.0                # the target of the verdict: the from-scratch arm's final score
PAPER_RANGE = (1.4, 7.8)      # the abstract's speed-up of inheritance over training from scratch
PRIMARY = "fmnist"
ARM_LABELS = {"inherited": "inherited from the teacher (manual)", "scratch": "random initialisation"}


def budget(profile: str = "mini", *, budget_scale: float = 1.0, length: float = LENGTH,
           points: int = POINTS) -> dict[str, int]:
    """The curve's length and evaluation schedule: ``steps``, ``every`` (steps between points), ``batch``."""
    if budget_scale <= 0 or length <= 0 or points < 1:
        raise TinyCLIPError(f"budget_scale and length must be positive and points at least 1 "
                            f"(got {budget_scale}, {length}, {points})")
    scratch = load_recipe(recipe_path(profile, "scratch")).stages[-1]
    base = load_recipe(recipe_path(profile, "s50")).stages[-1]
    steps = int(round(length * scratch.steps * budget_scale))
    if steps < 2:
        raise TinyCLIPError(f"a budget of {steps} step(s) has no curve; raise budget_scale (now {budget_scale})")
    return {"steps": steps, "every": max(1, math.ceil(steps / points)), "batch": base.batch}


def arms(profile: str = "mini", *, budget_scale: float = 1.0, length: float = LENGTH,
         points: int = POINTS) -> list[Arm]:
    """The inherited and from-scratch S50 arms: one recipe, the same budget and evaluation schedule."""
    plan = budget(profile, budget_scale=budget_scale, length=length, points=points)
    path = str(recipe_path(profile, "s50"))
    stage = load_recipe(path).stages[-1].name
    common = {"steps": plan["steps"], "eval": {"every": plan["every"]}}
    return [Arm("inherited", ARM_LABELS["inherited"], path, stage, {stage: common}),
            Arm("scratch", ARM_LABELS["scratch"], path, stage, {stage: {**common, "init": "random"}})]


def run(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
        points: int = POINTS, parallel: int = 2, threads: int | None = None) -> None:
    """Train both arms on every seed (finished runs are reused)."""
    train_arms(arms(profile, budget_scale=budget_scale, points=points), seeds, parallel=parallel, threads=threads)


def arm_curve(arm: Arm, seeds: Sequence[int], metric: str) -> tuple[list[int], dict[int, np.ndarray]]:
    """(samples at each evaluation point, seed → per-item scores [points, items]) of the arm's finished seeds."""
    grid: list[int] | None = None
    out: dict[int, np.ndarray] = {}
    for seed in seeds:
        summary = arm_summary(arm, seed)
        if summary is None:
            continue
        points = read_curve(summary["run_dir"])
        samples = [int(p["samples"]) for p in points]
        if grid is not None and samples != grid:
            raise TinyCLIPError(f"arm {arm.key}: seed {seed} was evaluated at other points than the other seeds")
        grid = samples
        out[seed] = np.stack([item_scores(p["items"], metric) for p in points])
    return grid or [], out


def eval_cost(arm: Arm, seeds: Sequence[int]) -> dict[str, float]:
    """What evaluating during training cost the arm's finished runs: points and minutes per run."""
    per_run = []
    for seed in seeds:
        summary = arm_summary(arm, seed)
        if summary is not None:
            per_run.append([p.get("eval_s", 0.0) for p in read_curve(summary["run_dir"]) if "eval_s" in p])
    if not per_run:
        return {"runs": 0, "points": 0, "eval_min_per_run": 0.0, "eval_s_per_point": 0.0}
    seconds = [s for run in per_run for s in run]
    return {"runs": len(per_run), "points": len(per_run[0]),
            "eval_min_per_run": float(np.mean([sum(r) for r in per_run])) / 60,
            "eval_s_per_point": float(np.mean(seconds)) if seconds else 0.0}


def _band(boot: np.ndarray) -> tuple[list[float], list[float]]:
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return [100 * float(v) for v in low], [100 * float(v) for v in high]


def analyse(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
            points: int = POINTS, fractions: Sequence[float] = FRACTIONS,
            metrics: Sequence[str] = ("fmnist", "retrieval")) -> dict[str, Any]:
    """Final scores per arm, both arms' learning curves with 95 % bands, the speed-up at every target on every
    metric, the cost of evaluating during training, and the C7 claim entry (headline: :data:`HEADLINE`)."""
    fractions = sorted(set(float(f) for f in fractions) | {HEADLINE})
    if any(f <= 0 for f in fractions):
        raise TinyCLIPError(f"target fractions must be positive, got {fractions}")
    study = arms(profile, budget_scale=budget_scale, points=points)
    by_key = {a.key: a for a in study}
    rows = score_rows(study, seeds, metrics=("fmnist", "retrieval", "tux", "openmoji"))
    curves: dict[str, Any] = {}
    speedups: dict[str, list[dict[str, Any]]] = {}
    for metric in metrics:
        grid_i, inherited = arm_curve(by_key["inherited"], seeds, metric)
        grid_s, scratch = arm_curve(by_key["scratch"], seeds, metric)
        if not (inherited and scratch and set(inherited) & set(scratch)):
            continue
        if grid_i != grid_s:
            raise TinyCLIPError("the two arms were evaluated at different points; rerun them with one schedule")
        paired = stats.paired_curves(inherited, scratch)
        curves[metric] = {"samples": grid_i, "seeds": paired["seeds"]}
        for key, values, mean, boot in (("inherited", inherited, paired["mean_a"], paired["boot_a"]),
                                        ("scratch", scratch, paired["mean_b"], paired["boot_b"])):
            low, high = _band(boot)
            curves[metric][key] = {"mean": [100 * float(v) for v in mean], "low": low, "high": high,
                                   "per_seed": {s: [100 * float(v) for v in m.mean(axis=1)] for s, m in values.items()}}
        speedups[metric] = [{**s.as_dict(), "metric": metric, "target": 100 * s.target}
                            for s in stats.speedups_from_curves(grid_i, paired, fractions)]
    plan = budget(profile, budget_scale=budget_scale, points=points)
    cost = {a.key: eval_cost(a, seeds) for a in study}
    claims = []
    head = next((s for s in speedups.get(PRIMARY, []) if s["fraction"] == HEADLINE), None)
    if head is not None:
        claims.append(claim_from_speedups(head, speedups[PRIMARY], profile, plan["steps"] * plan["batch"]))
    return {"arms": study, "rows": rows, "budget": plan, "curves": curves, "speedups": speedups,
            "eval_cost": cost, "claims": claims, "fractions": fractions}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def claim_from_speedups(head: dict[str, Any], primary: list[dict[str, Any]], profile: str,
                        budget_samples: int) -> dict[str, Any]:
    """The C7 entry: the headline speed-up and its verdict, the other targets and the paper's range as a note."""
    verdict = stats.verdict(head["ci_low"], head["ci_high"], threshold=1.0, claimed="above")
    if head["n_seeds"] < MIN_SEEDS:
        verdict = stats.INCONCLUSIVE
    low, high = PAPER_RANGE
    comparison = {"estimate": head["estimate"], "ci_low": head["ci_low"], "ci_high": head["ci_high"],
                  "n_seeds": head["n_seeds"], "kind": "ratio", "threshold": 1.0, "detectable": None}
    note = (f"Speed-up = samples(from scratch) / samples(inherited) to reach the from-scratch S50's final "
            f"{METRICS[PRIMARY].split(',')[0]} ({head['target']:.1f} %) within a budget of {budget_samples:,} "
            f"samples; its interval {against_paper(head)} the paper's {low}–{high}× range. Every target (share of the "
            "from-scratch final score): " +
            "; ".join(f"{s['fraction']:.2f}: {describe(s)}" for s in primary) + ".")
    if head["bound"] in ("lower", "upper"):
        note += f" The headline speed-up is {'at least' if head['bound'] == 'lower' else 'at most'} its estimate."
    details = [{k: (_finite(v) if isinstance(v, float) else v) for k, v in s.items()} for s in primary]
    return claim_entry("C7", verdict=verdict, comparison=comparison, metric=METRICS[PRIMARY], profile=profile,
                       details=details, note=note)


def against_paper(speedup: dict[str, Any]) -> str:
    """Where a speed-up's interval lies against the paper's range: "lies below", "lies above", "lies inside" or
    "overlaps"."""
    low, high = PAPER_RANGE
    if speedup["ci_high"] < low:
        return "lies below"
    if speedup["ci_low"] > high:
        return "lies above"
    return "lies inside" if low <= speedup["ci_low"] and speedup["ci_high"] <= high else "overlaps"


def describe(speedup: dict[str, Any]) -> str:
    """One speed-up in words: ``3.2× [2.1, 5.0]``, with its bound or an infinite end spelt out."""
    def num(v: float) -> str:
        return "∞" if np.isinf(v) else "–" if np.isnan(v) else f"{v:.2f}"

    if speedup["bound"] == "undefined":
        return "neither arm reaches it"
    text = f"{num(speedup['estimate'])}× [{num(speedup['ci_low'])}, {num(speedup['ci_high'])}]"
    if np.isinf(speedup["estimate"]):
        text += " (the inherited student starts at or above it)"
    elif speedup["bound"] == "lower":
        text = "≥ " + text + " (from scratch never reaches it: its whole budget counted)"
    elif speedup["bound"] == "upper":
        text = "≤ " + text + " (the inherited student never reaches it)"
    return text


def resolution(plan: dict[str, int]) -> dict[str, float]:
    """What the schedule can resolve: the largest speed-up at which the inherited arm's crossing still falls
    after its first evaluation point (beyond it, the crossing rests on the line from the untrained start)."""
    return {"resolved_up_to": plan["steps"] / plan["every"], "first_point_samples": plan["every"] * plan["batch"]}
