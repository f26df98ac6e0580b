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
* :func:`matched_speedup` — for learning curves (outcomes per evaluation point and item): how many times fewer
  samples one arm needs than another to reach the same score (:func:`samples_to_reach` reads where a curve,
  straight between its points, first reaches a level), with the same paired two-level bootstrap.
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
    other side, "inconclusive" when it straddles the threshold (or is undefined). An end may be infinite (a
    speed-up whose replicates include an arm that needs no training at all)."""
    if claimed not in ("above", "below"):
        raise ValueError(f"claimed must be 'above' or 'below', got {claimed!r}")
    if np.isnan(ci_low) or np.isnan(ci_high):  # an unbounded end (±inf) still lies on one side
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


# ------------------------------------------------------------------------------------- learning curves (C7)
def samples_to_reach(samples: Sequence[float], scores: Sequence[float] | np.ndarray,
                     target: float | Sequence[float]) -> float | np.ndarray:
    """Where a learning curve first reaches ``target``: the curve runs straight between its evaluation points
    ``(samples[i], scores[i])``; the answer is ``samples[0]`` when the first point already reaches the target and
    ``inf`` when no point does. ``scores`` may hold several curves as rows (then ``target`` is one level, or one
    per row, and the answer one value per row)."""
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    single = y.ndim == 1
    y = np.atleast_2d(y)
    if x.ndim != 1 or not len(x) or y.ndim != 2 or y.shape[1] != len(x):
        raise ValueError(f"a curve needs one score per evaluation point ({len(x)} points, scores {y.shape})")
    if np.any(np.diff(x) <= 0):
        raise ValueError("the evaluation points must be in increasing order of samples seen")
    levels = np.broadcast_to(np.asarray(target, dtype=np.float64), (len(y),))
    at_or_above = y >= levels[:, None]
    reached = at_or_above.any(axis=1)
    i = at_or_above.argmax(axis=1)          # the first point at or above the target
    j = np.maximum(i - 1, 0)                # the point before it, below the target (when i > 0)
    rows = np.arange(len(y))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(i > 0, (levels - y[rows, j]) / (y[rows, i] - y[rows, j]), 0.0)
    out = np.where(reached, x[j] + share * (x[i] - x[j]), np.inf)
    return float(out[0]) if single else out


def _curve_stack(outcomes: Mapping[int, Any], seeds: Sequence[int]) -> np.ndarray:
    rows = [np.asarray(outcomes[s], dtype=np.float64) for s in seeds]
    if any(r.ndim != 2 for r in rows) or len({r.shape for r in rows}) != 1:
        raise ValueError(f"each seed needs a [points, items] outcome array of one shape; got "
                         f"{[r.shape for r in rows]}")
    return np.stack(rows)


def paired_curves(a: Mapping[int, Any], b: Mapping[int, Any], *, n_boot: int = 2000, seed: int = 0
                  ) -> dict[str, Any]:
    """Two arms' mean learning curves and their bootstrap replicates. ``a`` and ``b`` map seed → outcomes per
    [evaluation point, item]; the seeds they share are paired. Each replicate draws seeds with replacement and,
    inside every drawn seed, items with replacement: the same draw for both arms and every evaluation point (the
    two-level bootstrap of :func:`paired_effect`). Returns ``mean_a``, ``mean_b`` ([points]), ``boot_a``,
    ``boot_b`` ([n_boot, points]), ``seeds``, ``n_items``."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common between the arms ({sorted(a)} vs {sorted(b)})")
    ma, mb = _curve_stack(a, seeds), _curve_stack(b, seeds)
    if ma.shape != mb.shape:
        raise ValueError(f"the arms were evaluated on different points or items ({ma.shape[1:]} vs {mb.shape[1:]})")
    n_seeds, _, n_items = ma.shape
    rng = np.random.default_rng(seed)
    boot_a, boot_b = np.empty((n_boot, ma.shape[1])), np.empty((n_boot, ma.shape[1]))
    uniform = np.full(n_items, 1.0 / n_items)
    for r in range(n_boot):
        drawn = rng.integers(0, n_seeds, size=n_seeds)
        counts = rng.multinomial(n_items, uniform, size=n_seeds).astype(np.float64)  # items drawn per seed
        boot_a[r] = np.einsum("spi,si->p", ma[drawn], counts) / (n_seeds * n_items)
        boot_b[r] = np.einsum("spi,si->p", mb[drawn], counts) / (n_seeds * n_items)
    return {"mean_a": ma.mean(axis=(0, 2)), "mean_b": mb.mean(axis=(0, 2)), "boot_a": boot_a, "boot_b": boot_b,
            "seeds": seeds, "n_items": n_items}


@dataclass(frozen=True)
class Speedup:
    """How many times fewer samples the fast arm needs than the slow arm to reach one target score."""

    fraction: float        # the target as a share of the slow arm's final score
    target: float          # the target score (the slow arm's final mean × fraction)
    samples_fast: float    # samples each arm's mean curve needs (inf: not within the budget)
    samples_slow: float
    estimate: float        # samples_slow / samples_fast (inf: the fast arm starts at the target)
    ci_low: float
    ci_high: float
    bound: str             # "" exact; "lower": the slow arm never got there (its budget stands in), so the
    #                        speed-up is at least this; "upper": the fast arm never did; "undefined": neither
    censored: float        # share of replicates in which an arm did not reach the target
    n_seeds: int
    n_items: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _speedup(samples: np.ndarray, fast: np.ndarray, slow: np.ndarray, fractions: np.ndarray
             ) -> tuple[np.ndarray, ...]:
    """For curves [rows, points]: targets, samples of each arm and the speed-up per (row, fraction); an arm that
    never reaches a target is given the whole budget (the last point), which bounds the speed-up."""
    targets = slow[:, -1:] * fractions[None, :]
    s_fast = np.stack([samples_to_reach(samples, fast, targets[:, k]) for k in range(len(fractions))], axis=1)
    s_slow = np.stack([samples_to_reach(samples, slow, targets[:, k]) for k in range(len(fractions))], axis=1)
    budget = samples[-1]
    never_fast, never_slow = np.isinf(s_fast), np.isinf(s_slow)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(never_slow, budget, s_slow) / np.where(never_fast, budget, s_fast)
    ratio = np.where(never_fast & never_slow, np.nan, ratio)
    return targets, s_fast, s_slow, ratio, never_fast | never_slow


def speedups_from_curves(samples: Sequence[float], curves: Mapping[str, Any], fractions: Sequence[float]
                         ) -> list[Speedup]:
    """:func:`matched_speedup` on the output of :func:`paired_curves` (arm ``a`` fast, arm ``b`` slow)."""
    x = np.asarray(samples, dtype=np.float64)
    f = np.asarray(fractions, dtype=np.float64)
    targets, s_fast, s_slow, point, _ = _speedup(x, curves["mean_a"][None], curves["mean_b"][None], f)
    _, _, _, boot, censored = _speedup(x, curves["boot_a"], curves["boot_b"], f)
    out = []
    for k, fraction in enumerate(f):
        reps = boot[:, k][~np.isnan(boot[:, k])]
        # no interpolation between replicates: one of them may be infinite
        low, high = (np.percentile(reps, [2.5, 97.5], method="inverted_cdf") if len(reps) else (np.nan, np.nan))
        sf, ss = s_fast[0, k], s_slow[0, k]
        bound = ("undefined" if np.isinf(sf) and np.isinf(ss) else "lower" if np.isinf(ss)
                 else "upper" if np.isinf(sf) else "")
        out.append(Speedup(fraction=float(fraction), target=float(targets[0, k]), samples_fast=float(sf),
                           samples_slow=float(ss), estimate=float(point[0, k]), ci_low=float(low),
                           ci_high=float(high), bound=bound, censored=float(censored[:, k].mean()),
                           n_seeds=len(curves["seeds"]), n_items=int(curves["n_items"])))
    return out


def matched_speedup(fast: Mapping[int, Any], slow: Mapping[int, Any], samples: Sequence[float],
                    fractions: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> list[Speedup]:
    """The speed-up of arm ``fast`` over arm ``slow`` at matched scores: for each target (``fraction`` × the slow
    arm's final mean score), samples(slow) / samples(fast) to first reach it, each read off the arm's mean
    learning curve (seeds and items averaged) by :func:`samples_to_reach`. ``fast`` and ``slow`` map seed →
    outcomes per [evaluation point, item], evaluated after ``samples`` samples. The 95 % interval comes from the
    paired two-level bootstrap of :func:`paired_curves`; in each replicate the target follows that replicate's
    slow final score. An arm that never reaches a target within the budget is given the budget, so the
    speed-up is then a bound (``Speedup.bound``)."""
    return speedups_from_curves(samples, paired_curves(fast, slow, n_boot=n_boot, seed=seed), fractions)
