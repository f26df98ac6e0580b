"""Claim C1 (paper §3.1, Table 4): affinity mimicking against the other ways a student can learn from a teacher.

One student, S50 by manual inheritance straight from the mini teacher (``recipes/<profile>_s50.yaml``, 156 steps),
trained on the same seeds, data order and evaluation items with only the loss changed
(:mod:`tinyclip.losses`):

* ``affinity`` — image→text + text→image affinity mimicking (the paper's method, TinyCLIP's loss);
* ``contrastive`` — the student's own CLIP loss on the pairs, no teacher signal;
* ``contrastive+affinity`` — both;
* ``feature`` — feature mimicking (match the teacher's embeddings);
* ``image_image+text_text`` — affinities within one modality (image–image and text–text).

C1 holds when affinity mimicking beats every other mode: reproduced when every paired interval (affinity − mode)
lies above zero, not reproduced when any lies below, inconclusive otherwise.
"""
from __future__ import annotations

from typing import Any, Sequence

from .. import stats
from .claims import claim_entry, compare
from .common import METRICS, Arm, arm_outcomes, recipe_path, score_rows, train_arms

MODES = {
    "affinity": "affinity mimicking, image→text + text→image (paper)",
    "contrastive": "contrastive only (no teacher signal)",
    "contrastive+affinity": "contrastive + affinity mimicking",
    "feature": "feature mimicking",
    "image_image+text_text": "image–image + text–text affinities",
}
PRIMARY = "fmnist"


def arms(profile: str = "mini", *, budget_scale: float = 1.0, modes: Sequence[str] = tuple(MODES)) -> list[Arm]:
    path = str(recipe_path(profile, "s50"))
    return [Arm(mode, MODES[mode], path, "S50", {} if mode == "affinity" else {"*": {"loss": mode}}, budget_scale)
            for mode in modes]


def run(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
        modes: Sequence[str] = tuple(MODES), parallel: int = 2, threads: int | None = None) -> None:
    """Train every arm on every seed (finished runs are reused)."""
    train_arms(arms(profile, budget_scale=budget_scale, modes=modes), seeds, parallel=parallel, threads=threads)


def analyse(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
            modes: Sequence[str] = tuple(MODES)) -> dict[str, Any]:
    """Scores per arm, affinity − every other mode on every metric, and the C1 claim entry."""
    study = arms(profile, budget_scale=budget_scale, modes=modes)
    by_key = {a.key: a for a in study}
    rows = score_rows(study, seeds, metrics=("fmnist", "retrieval", "tux", "openmoji"))
    comparisons = []
    for other in (a.key for a in study if a.key != "affinity"):
        for metric in ("fmnist", "retrieval"):
            oa, ob = arm_outcomes(by_key["affinity"], seeds, metric), arm_outcomes(by_key[other], seeds, metric)
            if oa and ob and set(oa) & set(ob):
                comparisons.append({"claim": "C1", "a": "affinity", "b": other, "metric": metric, **compare(oa, ob)})
    primary = [c for c in comparisons if c["metric"] == PRIMARY]
    claims = []
    if primary:
        head = min(primary, key=lambda c: c["estimate"])  # the strongest competitor
        note = ("Affinity mimicking minus each other mode; headline: the strongest competitor "
                f"({head['b']}); per mode: " +
                "; ".join(f"{c['b']} {c['estimate']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] {c['verdict']}"
                          for c in primary) + ".")
        claims.append(claim_entry("C1", verdict=stats.combine_verdicts([c["verdict"] for c in primary]),
                                  comparison=head, metric=METRICS[PRIMARY], profile=profile, details=comparisons,
                                  note=note))
    return {"arms": study, "rows": rows, "comparisons": comparisons, "claims": claims}
