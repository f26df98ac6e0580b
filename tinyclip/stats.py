"""The statistics every claims study shares: paired effects, bootstrap intervals over seeds and items, verdicts.

A study compares arms trained on the *same* seeds (so the same data order and augmentation draws) and scored on
the *same* evaluation items. Its raw material is, per arm and seed, one outcome per evaluation item (a hit, or a
mean recall over k; :mod:`tinyclip.eval` keeps them in each run folder). From that:

* :func:`paired_effect` — the effect of arm A over arm B (difference of means, or ratio of means), with a 95 %
  interval by a two-level bootstrap: resample seeds with replacement, and within every drawn seed resample the
  evaluation items with replacement, the *same* items for both arms (the pairing that removes the item noise
  common to both). The interval therefore covers the seed-to-seed variance of the student (initial draws of
  the data order, augmentation, masks) and the sampling of the evaluation items; it does not cover the teacher
  or the data build, which every arm shares (the study says so where it matters).
* :func:`verdict` — the rule applied by code: "reproduced" when the interval lies wholly on the side the paper
  claims, "not reproduced" when it lies wholly on the other side, "inconclusive" otherwise.
* ``Effect.detectable`` — the smallest effect the experiment could have detected: 2.8 bootstrap standard
  errors (a two-sided 5 % test with 80 % power, (1.96 + 0.84) · SE).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
DETECTABLE_Z = 1.96 + 0.84   # two-sided 5 % level, 80 % power


@dataclass(frozen=True)
class Effect:
    """A measured effect of arm A relative to arm B, with its 95 % bootstrap interval."""

    estimate: float
    ci_low: float
    ci_high: float
    se: float
    kind: str            # "difference" (A − B) or "ratio" (A / B)
    n_seeds: int
    n_items: int

    @property
    def detectable(self) -> float:
        """The smallest effect (same units as ``estimate``, measured from the null) this design could detect."""
        return DETECTABLE_Z * self.se

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detectable": self.detectable}


def _as_matrix(outcomes: Mapping[int, Sequence[float]] | Sequence[Sequence[float]]) -> tuple[list, np.ndarray]:
    """Per-seed outcome rows as a [seeds, items] float array (every seed scored on the same items)."""
    if isinstance(outcomes, Mapping):
        seeds = sorted(outcomes)
        rows = [np.asarray(outcomes[s], dtype=np.float64) for s in seeds]
    else:
        seeds = list(range(len(outcomes)))
        rows = [np.asarray(r, dtype=np.float64) for r in outcomes]
    if not rows:
        raise ValueError("no seeds to compare")
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"every seed must be scored on the same items; got item counts {[len(r) for r in rows]}")
    return seeds, np.stack(rows)


def paired_effect(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]], *, kind: str = "difference",
                  scale: float = 1.0, shared_b: bool = False, n_boot: int = 2000, seed: int = 0) -> Effect:
    """The effect of arm ``a`` over arm ``b``: ``mean(a) − mean(b)`` (``kind="difference"``) or
    ``mean(a) / mean(b)`` (``"ratio"``), each mean over seeds and items; ``scale`` multiplies a difference
    (100 turns a share into points).

    ``a`` and ``b`` map seed → per-item outcomes. Seeds present in both are paired. With ``shared_b`` arm ``b`` is
    one run shared by every seed of ``a`` (a teacher) and is paired with each of them. The interval is the
    2.5–97.5 percentile of ``n_boot`` two-level bootstrap replicates (seeds, then items within each seed, the same
    draw for both arms), so it is reproducible for a given ``seed``."""
    if kind not in ("difference", "ratio"):
        raise ValueError(f"kind must be 'difference' or 'ratio', got {kind!r}")
    seeds_a, ma = _as_matrix(a)
    seeds_b, mb = _as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"the arms were scored on different items ({ma.shape[1]} vs {mb.shape[1]})")
    if shared_b:
        if len(seeds_b) != 1:
            raise ValueError(f"shared_b: arm b must be a single run, got seeds {seeds_b}")
        mb = np.repeat(mb, len(seeds_a), axis=0)
    else:
        common = sorted(set(seeds_a) & set(seeds_b))
        if not common:
            raise ValueError(f"no seed in common between the arms ({seeds_a} vs {seeds_b})")
        ma = ma[[seeds_a.index(s) for s in common]]
        mb = mb[[seeds_b.index(s) for s in common]]
    n_seeds, n_items = ma.shape

    def stat(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
        return (xa - xb) * scale if kind == "difference" else xa / np.where(xb == 0, np.nan, xb)

    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    means_a = np.empty(n_boot)
    means_b = np.empty(n_boot)
    for r in range(n_boot):  # one item draw per drawn seed, shared by both arms
        items = rng.integers(0, n_items, size=(n_seeds, n_items))
        rows = seed_draw[r][:, None]
        means_a[r] = ma[rows, items].mean()
        means_b[r] = mb[rows, items].mean()
    replicates = stat(means_a, means_b)
    low, high = np.nanpercentile(replicates, [2.5, 97.5])
    estimate = float(stat(np.array(ma.mean()), np.array(mb.mean())))
    return Effect(estimate=estimate, ci_low=float(low), ci_high=float(high), se=float(np.nanstd(replicates)),
                  kind=kind, n_seeds=n_seeds, n_items=n_items)


def mean_interval(outcomes: Mapping[int, Sequence[float]], *, scale: float = 1.0, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of one arm's score over seeds and items, by the same two-level bootstrap."""
    _, m = _as_matrix(outcomes)
    rng = np.random.default_rng(seed)
    n_seeds, n_items = m.shape
    reps = np.empty(n_boot)
    for r in range(n_boot):
        rows = rng.integers(0, n_seeds, size=n_seeds)[:, None]
        reps[r] = m[rows, rng.integers(0, n_items, size=(n_seeds, n_items))].mean()
    low, high = np.percentile(reps * scale, [2.5, 97.5])
    return float(m.mean() * scale), float(low), float(high)


def verdict(ci_low: float, ci_high: float, *, threshold: float = 0.0, claimed: str = "above") -> str:
    """"reproduced" when the interval lies wholly on the claimed side of ``threshold`` (``claimed="above"``: the
    paper says the effect exceeds it; ``"below"``: falls short of it), "not reproduced" when it lies wholly on the
    other side, "inconclusive" when it straddles the threshold (or is undefined)."""
    if claimed not in ("above", "below"):
        raise ValueError(f"claimed must be 'above' or 'below', got {claimed!r}")
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return INCONCLUSIVE
    above, below = ci_low > threshold, ci_high < threshold
    if claimed == "below":
        above, below = below, above
    return REPRODUCED if above else NOT_REPRODUCED if below else INCONCLUSIVE


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons that must all hold (e.g. "beats every other mode"): reproduced only when
    every one is; not reproduced when any one is refuted; inconclusive otherwise."""
    if not verdicts:
        return INCONCLUSIVE
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return REPRODUCED if all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE
