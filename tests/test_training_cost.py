"""Claim C7's measure on known curves: where a curve reaches a level (tinyclip.stats.samples_to_reach), the speed-up
at matched scores with its bounds and paired bootstrap (matched_speedup), the verdict with an unbounded interval,
and the study's arms (tinyclip.studies.training_cost): one recipe, one budget, only the initialisation differs."""
from __future__ import annotations

import numpy as np
import pytest

from tinyclip import stats
from tinyclip.errors import TinyCLIPError

X = np.arange(0, 1300, 100, dtype=float)   # evaluation points: 0, 100, ..., 1200 samples


def arm(curve: np.ndarray, seeds: int = 3, items: int = 20) -> dict[int, np.ndarray]:
    """Every item scores the curve's value at every point: no item or seed noise, a degenerate bootstrap."""
    return {s: np.repeat(np.asarray(curve, dtype=float)[:, None], items, axis=1) for s in range(seeds)}


# ----------------------------------------------------------------------------------------------- crossings
def test_samples_to_reach_interpolates_between_points():
    x, y = [0, 100, 200], [0.1, 0.5, 0.9]
    assert stats.samples_to_reach(x, y, 0.7) == pytest.approx(150.0)
    assert stats.samples_to_reach(x, y, 0.5) == pytest.approx(100.0)    # exactly on a point
    assert stats.samples_to_reach(x, y, 0.05) == 0.0                    # the start already reaches it
    assert stats.samples_to_reach(x, y, 0.95) == np.inf                 # never within the budget


def test_samples_to_reach_takes_the_first_crossing_of_a_noisy_curve():
    x, y = [0, 100, 200, 300], [0.1, 0.6, 0.4, 0.8]
    assert stats.samples_to_reach(x, y, 0.5) == pytest.approx(80.0)    # up through 0.5 before the dip
    assert stats.samples_to_reach(x, y, 0.7) == pytest.approx(275.0)


def test_samples_to_reach_many_curves_at_once():
    rows = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]])
    out = stats.samples_to_reach([0, 10, 20], rows, [0.7, 0.35])
    assert out == pytest.approx([15.0, 15.0])
    assert stats.samples_to_reach([0, 10, 20], rows, 0.45).tolist() == [pytest.approx(8.75), np.inf]


@pytest.mark.parametrize("x, y", [([0, 100, 100], [0.1, 0.2, 0.3]), ([0, 100], [0.1, 0.2, 0.3]), ([], [])])
def test_samples_to_reach_refuses_bad_curves(x, y):
    with pytest.raises(ValueError):
        stats.samples_to_reach(x, y, 0.2)


# ----------------------------------------------------------------------------------------------- speed-ups
SLOW = X / 1500                       # reaches 0.8 at 1200 (its final), 0.4 at 600
FAST = np.minimum(0.9, 0.002 * X)     # reaches 0.8 at 400, 0.4 at 200; 0.88 between 400 and 500


def test_a_curve_three_times_faster_gives_three_at_every_target():
    out = stats.matched_speedup(arm(FAST), arm(SLOW), X, [0.5, 0.75, 1.0], n_boot=200)
    for s in out:
        assert s.estimate == pytest.approx(3.0) and s.ci_low == pytest.approx(3.0) and s.ci_high == pytest.approx(3.0)
        assert s.bound == "" and s.censored == 0.0 and s.n_seeds == 3 and s.n_items == 20
    assert [s.target for s in out] == pytest.approx([0.4, 0.6, 0.8])
    assert (out[0].samples_fast, out[0].samples_slow) == pytest.approx((200.0, 600.0))


def test_a_target_from_scratch_never_reaches_gives_a_lower_bound():
    [s] = stats.matched_speedup(arm(FAST), arm(SLOW), X, [1.1], n_boot=100)   # target 0.88
    assert s.samples_slow == np.inf and s.samples_fast == pytest.approx(480.0)   # on the line 400 -> 500
    assert s.bound == "lower" and s.estimate == pytest.approx(1200 / 480) and s.censored == 1.0


def test_a_target_the_fast_arm_never_reaches_gives_an_upper_bound_below_one():
    stuck = np.full_like(X, 0.3)
    [s] = stats.matched_speedup(arm(stuck), arm(SLOW), X, [0.5], n_boot=100)  # target 0.4: slow at 600
    assert s.bound == "upper" and s.estimate == pytest.approx(0.5)
    assert stats.verdict(s.ci_low, s.ci_high, threshold=1.0) == stats.NOT_REPRODUCED


def test_an_arm_that_starts_above_the_target_is_infinitely_faster():
    head_start = np.maximum(0.5, FAST)
    [s] = stats.matched_speedup(arm(head_start), arm(SLOW), X, [0.5], n_boot=100)
    assert s.samples_fast == 0.0 and s.estimate == np.inf and s.ci_low == np.inf
    assert stats.verdict(s.ci_low, s.ci_high, threshold=1.0) == stats.REPRODUCED


def test_identical_arms_give_one_and_no_verdict():
    [s] = stats.matched_speedup(arm(SLOW), arm(SLOW), X, [0.9], n_boot=200)
    assert s.estimate == pytest.approx(1.0) and s.ci_low == pytest.approx(1.0) == s.ci_high
    assert stats.verdict(s.ci_low, s.ci_high, threshold=1.0) == stats.INCONCLUSIVE


def test_bootstrap_interval_covers_seed_and_item_noise():
    """Bernoulli items around the curves, one seed slower than the others: the interval is wide, holds the
    estimate, and still lies above 1 for a 3x faster arm."""
    rng = np.random.default_rng(0)

    def noisy(curve, shifts):
        return {s: (rng.random((len(X), 400)) < np.clip(curve + d, 0, 1)[:, None]).astype(float)
                for s, d in enumerate(shifts)}
    fast, slow = noisy(FAST, [0.0, -0.03, 0.02]), noisy(SLOW, [0.0, -0.02, 0.01])
    [s] = stats.matched_speedup(fast, slow, X, [0.9], n_boot=400)
    assert s.ci_low <= s.estimate <= s.ci_high and s.ci_high - s.ci_low > 0.1
    assert 1.0 < s.ci_low and 2.0 < s.estimate < 4.5


def test_paired_curves_refuses_arms_on_other_points_or_seeds():
    with pytest.raises(ValueError, match="different points"):
        stats.paired_curves(arm(FAST), arm(SLOW[:-1]), n_boot=10)
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_curves({5: arm(FAST)[0]}, arm(SLOW), n_boot=10)


@pytest.mark.parametrize("low, high, expected", [
    (1.5, np.inf, stats.REPRODUCED), (-np.inf, 0.5, stats.NOT_REPRODUCED), (-np.inf, np.inf, stats.INCONCLUSIVE),
    (np.nan, np.inf, stats.INCONCLUSIVE)])
def test_the_verdict_rule_accepts_unbounded_intervals(low, high, expected):
    assert stats.verdict(low, high, threshold=1.0) == expected


# ----------------------------------------------------------------------------------------------- the study
def test_the_arms_differ_only_in_initialisation(env, runs):
    from tinyclip.recipe import load_recipe, resolve_recipe
    from tinyclip.studies import training_cost
    from tinyclip.studies.common import materialize

    plan = training_cost.budget("smoke", budget_scale=0.1)
    assert plan == {"steps": 80, "every": 7, "batch": 64}  # 2 x smoke_scratch's 400 steps x 0.1; 80 / 12 -> 7
    inherited, scratch = training_cost.arms("smoke", budget_scale=0.1)
    a, b = (resolve_recipe(load_recipe(materialize(x)), device="cpu")[-1] for x in (inherited, scratch))
    assert a["init"]["from"] == "teacher" and b["init"] == {"from": "random"}
    assert {k: v for k, v in a.items() if k != "init"} == {k: v for k, v in b.items() if k != "init"}
    assert a["steps"] == 80 and a["eval"]["every"] == 7
    # the from-scratch arm is the from-scratch recipe run with this budget and schedule
    reference = load_recipe(training_cost.recipe_path("smoke", "scratch")).stages[-1]
    assert (reference.student, reference.loss, reference.batch, reference.lr) == (
        b["student"]["name"], b["loss"], b["batch"], b["optim"]["lr"])


@pytest.mark.parametrize("kwargs", [{"budget_scale": 0}, {"points": 0}, {"budget_scale": 0.001}])
def test_a_budget_without_a_curve_is_refused_in_one_line(kwargs):
    from tinyclip.studies import training_cost

    with pytest.raises(TinyCLIPError):
        training_cost.budget("smoke", **kwargs)


def speedup(fraction=1.0, estimate=3.0, low=2.0, high=4.5, bound="", seeds=3) -> dict:
    return {"fraction": fraction, "target": 60.0, "samples_fast": 400.0, "samples_slow": 1200.0,
            "estimate": estimate, "ci_low": low, "ci_high": high, "bound": bound, "censored": 0.0,
            "n_seeds": seeds, "n_items": 100, "metric": "fmnist"}


@pytest.mark.parametrize("head, verdict, place", [
    (speedup(), "reproduced", "lies inside"),
    (speedup(estimate=12.0, low=9.0, high=np.inf), "reproduced", "lies above"),
    (speedup(estimate=1.1, low=0.8, high=1.5), "inconclusive", "overlaps"),
    (speedup(estimate=0.5, low=0.4, high=0.7, bound="upper"), "not reproduced", "lies below"),
    (speedup(seeds=2), "inconclusive", "lies inside"),
])
def test_the_c7_entry(head, verdict, place):
    from tinyclip.studies import training_cost

    entry = training_cost.claim_from_speedups(head, [speedup(0.5, estimate=np.inf, low=np.inf, high=np.inf), head],
                                              "smoke", 80 * 64)
    assert entry["id"] == "C7" and entry["verdict"] == verdict and entry["kind"] == "ratio"
    assert entry["effect"] == head["estimate"] and entry["threshold"] == 1.0
    assert f"interval {place} the paper's 1.4–7.8× range" in entry["note"]
    assert entry["details"][0]["estimate"] is None  # an infinite speed-up is stored as unknown in claims.json
    assert ("is at most its estimate" in entry["note"]) == (head["bound"] == "upper")


def test_describe_spells_out_bounds_and_infinite_ends():
    from tinyclip.studies.training_cost import describe

    assert describe(speedup()) == "3.00× [2.00, 4.50]"
    assert describe(speedup(bound="lower")).startswith("≥ 3.00×") and "never reaches it" in describe(
        speedup(bound="lower"))
    assert "starts at or above it" in describe(speedup(estimate=np.inf, low=np.inf, high=np.inf))
    assert describe(speedup(bound="undefined")) == "neither arm reaches it"
