"""Claims C2 and C3 (paper §3.2–3.3, Table 5 and Fig. 5): weight inheritance against random initialisation, and
automatic against manual inheritance, at the same student size and training budget.

Arms, all ≈50 % of the mini teacher, distilled from it by affinity mimicking on the same seeds:

* ``manual`` — the manual chain of Table 2 (teacher → S75 → S50, 2 × 156 steps), scored at S50;
* ``scratch`` — the same S50 architecture from random weights with the chain's whole budget (312 steps);
* ``auto<f>`` — the automatic chain (teacher → A75 → A50, 2 × 156 steps) pruned to exactly the manual students'
  sizes, with the mask phase taking a share ``f`` of each stage (10 %, 25 % — the recipe's own — and 40 %), so
  the C3 verdict does not hinge on one schedule. Every arm uses the same weight learning-rate schedule (8-step
  warm-up, cosine) and budget; the auto stages spend their first ``f`` of it learning masks.

C2 is judged on ``manual − scratch``; C3 on ``auto<f> − manual`` for every ``f``: reproduced when auto wins at
every mask-phase length, not reproduced when it loses at every one, inconclusive otherwise.
"""
from __future__ import annotations

from typing import Any, Sequence

from .. import stats
from ..recipe import load_recipe
from .claims import claim_entry, compare
from .common import METRICS, Arm, arm_outcomes, recipe_path, score_rows, train_arms

MASK_FRACTIONS = (0.10, 0.25, 0.40)
PRIMARY = "fmnist"


def _auto_arm(profile: str, fraction: float, budget_scale: float) -> Arm:
    path = recipe_path(profile, "auto")
    recipe = load_recipe(path)
    overrides: dict[str, Any] = {}
    own = {round(s.auto["mask_steps"] / s.steps, 2) for s in recipe.stages}
    if own != {round(fraction, 2)}:  # the recipe's own schedule needs no variant (its runs are Table 2's)
        for stage in recipe.stages:
            mask_steps = max(1, round(fraction * stage.steps))
            overrides[stage.name] = {"auto": {"mask_steps": mask_steps, "sparsity_warmup": max(1, mask_steps // 2)}}
    return Arm(f"auto{round(100 * fraction)}", f"automatic inheritance, mask phase {100 * fraction:.0f} % of each stage",
               str(path), recipe.stages[-1].name, overrides, budget_scale)


def arms(profile: str = "mini", *, budget_scale: float = 1.0,
         mask_fractions: Sequence[float] = MASK_FRACTIONS) -> list[Arm]:
    manual = load_recipe(recipe_path(profile, "manual"))
    scratch = load_recipe(recipe_path(profile, "scratch"))
    return [Arm("manual", "manual inheritance (teacher → S75 → S50)", str(recipe_path(profile, "manual")),
                manual.stages[-1].name, {}, budget_scale),
            Arm("scratch", "random initialisation, the chain's whole budget", str(recipe_path(profile, "scratch")),
                scratch.stages[-1].name, {}, budget_scale),
            *[_auto_arm(profile, f, budget_scale) for f in mask_fractions]]


def run(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
        mask_fractions: Sequence[float] = MASK_FRACTIONS, parallel: int = 2, threads: int | None = None) -> None:
    """Train every arm on every seed (finished runs are reused)."""
    train_arms(arms(profile, budget_scale=budget_scale, mask_fractions=mask_fractions), seeds,
               parallel=parallel, threads=threads)


def analyse(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
            mask_fractions: Sequence[float] = MASK_FRACTIONS) -> dict[str, Any]:
    """Scores per arm, the paired comparisons on every metric, and the C2 / C3 claim entries (primary metric:
    Fashion-MNIST in-domain prompted top-1)."""
    study = arms(profile, budget_scale=budget_scale, mask_fractions=mask_fractions)
    by_key = {a.key: a for a in study}
    rows = score_rows(study, seeds, metrics=("fmnist", "retrieval", "tux", "openmoji"))
    comparisons = []
    pairs = [("C2", "manual", "scratch")] + [("C3", a.key, "manual") for a in study if a.key.startswith("auto")]
    for claim, a, b in pairs:
        for metric in ("fmnist", "retrieval"):
            oa, ob = arm_outcomes(by_key[a], seeds, metric), arm_outcomes(by_key[b], seeds, metric)
            if oa and ob and set(oa) & set(ob):
                comparisons.append({"claim": claim, "a": a, "b": b, "metric": metric, **compare(oa, ob)})
    primary = [c for c in comparisons if c["metric"] == PRIMARY]
    claims = []
    c2 = next((c for c in primary if c["claim"] == "C2"), None)
    if c2:
        claims.append(claim_entry("C2", verdict=c2["verdict"], comparison=c2, metric=METRICS[PRIMARY],
                                  profile=profile, details=[c for c in comparisons if c["claim"] == "C2"],
                                  note="Inherited S50 (manual chain) minus the from-scratch S50, same budget."))
    c3 = [c for c in primary if c["claim"] == "C3"]
    if c3:
        verdicts = [c["verdict"] for c in c3]
        overall = (stats.REPRODUCED if all(v == stats.REPRODUCED for v in verdicts) else
                   stats.NOT_REPRODUCED if all(v == stats.NOT_REPRODUCED for v in verdicts) else stats.INCONCLUSIVE)
        head = max(c3, key=lambda c: c["estimate"])  # the schedule most favourable to the claim
        note = ("Automatic minus manual S50 at equal size and budget; headline: the most favourable mask-phase "
                f"length ({head['a']}); per length: " +
                "; ".join(f"{c['a']} {c['estimate']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] {c['verdict']}"
                          for c in c3) + ". Reproduced only if auto wins at every length.")
        missing = [a.key for a in study if a.key.startswith("auto") and a.key not in {c["a"] for c in c3}]
        if missing:
            note += f" Not yet trained (left out of the verdict): {', '.join(missing)}."
        claims.append(claim_entry("C3", verdict=overall, comparison=head, metric=METRICS[PRIMARY], profile=profile,
                                  details=[c for c in comparisons if c["claim"] == "C3"], note=note))
    return {"arms": study, "rows": rows, "comparisons": comparisons, "claims": claims}
