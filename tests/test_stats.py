"""tinyclip.stats on known answers: paired effects, two-level bootstrap intervals, the verdict rule."""
from __future__ import annotations

import numpy as np
import pytest

from tinyclip import stats


def test_constant_arms_give_exact_effects_and_degenerate_intervals():
    a = {s: np.ones(50) for s in range(3)}
    b = {s: np.zeros(50) for s in range(3)}
    e = stats.paired_effect(a, b, scale=100.0)
    assert (e.estimate, e.ci_low, e.ci_high, e.se) == (100.0, 100.0, 100.0, 0.0)
    assert e.n_seeds == 3 and e.n_items == 50
    half = {s: np.full(50, 0.5) for s in range(3)}
    r = stats.paired_effect(half, a, kind="ratio")
    assert r.estimate == pytest.approx(0.5) and r.ci_low == pytest.approx(0.5) and r.ci_high == pytest.approx(0.5)


def test_pairing_removes_the_item_noise_both_arms_share():
    """Arm A = arm B + 0.1 on every item: the paired difference has no variance although the items vary a lot."""
    rng = np.random.default_rng(0)
    b = {s: rng.random(400) for s in range(3)}
    a = {s: v + 0.1 for s, v in b.items()}
    e = stats.paired_effect(a, b)
    assert e.estimate == pytest.approx(0.1) and e.ci_high - e.ci_low < 1e-9


def test_item_bootstrap_matches_the_binomial_standard_error():
    """One seed, independent hits with p = 0.3 against a constant arm: SE of the mean is sqrt(p(1-p)/n)."""
    rng = np.random.default_rng(1)
    n = 2000
    a = {0: (rng.random(n) < 0.3).astype(float)}
    b = {0: np.zeros(n)}
    e = stats.paired_effect(a, b, n_boot=4000)
    expected_se = np.sqrt(a[0].mean() * (1 - a[0].mean()) / n)
    assert e.se == pytest.approx(expected_se, rel=0.1)
    assert e.ci_low == pytest.approx(e.estimate - 1.96 * expected_se, abs=0.006)
    assert e.detectable == pytest.approx(2.8 * e.se)


def test_seed_variance_widens_the_interval():
    """The same per-item noise plus a seed-level shift: resampling seeds must widen the interval."""
    rng = np.random.default_rng(2)
    items = rng.random(300)
    b = {s: items for s in range(5)}
    steady = {s: items + 0.05 for s in range(5)}
    shaky = {s: items + 0.05 + shift for s, shift in enumerate([-0.04, 0.03, -0.02, 0.04, -0.01])}
    narrow = stats.paired_effect(steady, b)
    wide = stats.paired_effect(shaky, b)
    assert narrow.ci_high - narrow.ci_low < 1e-9 < wide.ci_high - wide.ci_low
    assert wide.ci_low < 0.05 + np.mean([-0.04, 0.03, -0.02, 0.04, -0.01]) < wide.ci_high


def test_single_run_arm_is_shared_by_every_seed_and_unmatched_seeds_are_dropped():
    teacher = {0: np.full(10, 0.8)}
    student = {1: np.full(10, 0.4), 2: np.full(10, 0.8)}
    e = stats.paired_effect(student, teacher, kind="ratio", shared_b=True)
    assert e.n_seeds == 2 and e.estimate == pytest.approx(0.75)
    # without shared_b an arm that has finished one seed is paired on that seed only, never broadcast
    e = stats.paired_effect({0: np.ones(4), 1: np.ones(4), 2: np.ones(4)}, {0: np.zeros(4)})
    assert e.n_seeds == 1
    with pytest.raises(ValueError, match="single run"):
        stats.paired_effect(student, student, shared_b=True)
    e = stats.paired_effect({0: np.ones(4), 1: np.ones(4)}, {1: np.zeros(4), 7: np.zeros(4)})
    assert e.n_seeds == 1
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_effect({0: np.ones(4), 1: np.ones(4)}, {2: np.ones(4), 3: np.ones(4)})
    with pytest.raises(ValueError, match="different items"):
        stats.paired_effect({0: np.ones(4)}, {0: np.ones(5)})
    with pytest.raises(ValueError, match="same items"):
        stats.paired_effect({0: np.ones(4), 1: np.ones(3)}, {0: np.ones(4), 1: np.ones(4)})


def test_bootstrap_is_reproducible_for_a_seed():
    rng = np.random.default_rng(3)
    a = {s: rng.random(100) for s in range(3)}
    b = {s: rng.random(100) for s in range(3)}
    assert stats.paired_effect(a, b, seed=5) == stats.paired_effect(a, b, seed=5)
    assert stats.paired_effect(a, b, seed=5) != stats.paired_effect(a, b, seed=6)


def test_mean_interval_brackets_the_mean():
    rng = np.random.default_rng(4)
    arm = {s: (rng.random(500) < 0.6).astype(float) for s in range(3)}
    mean, low, high = stats.mean_interval(arm, scale=100.0)
    assert low < mean < high and mean == pytest.approx(100 * np.mean([v.mean() for v in arm.values()]))


@pytest.mark.parametrize("low, high, threshold, claimed, expected", [
    (0.5, 2.0, 0.0, "above", "reproduced"),
    (-2.0, -0.1, 0.0, "above", "not reproduced"),
    (-0.5, 1.0, 0.0, "above", "inconclusive"),
    (0.96, 0.99, 0.95, "above", "reproduced"),       # C8: keeps >= 95 % of the teacher
    (0.90, 0.97, 0.95, "above", "inconclusive"),
    (0.80, 0.90, 0.95, "above", "not reproduced"),
    (-2.0, -0.1, 0.0, "below", "reproduced"),
    (float("nan"), 1.0, 0.0, "above", "inconclusive"),
])
def test_verdict_rule(low, high, threshold, claimed, expected):
    assert stats.verdict(low, high, threshold=threshold, claimed=claimed) == expected


def test_combined_verdicts():
    R, N, I = stats.REPRODUCED, stats.NOT_REPRODUCED, stats.INCONCLUSIVE
    assert stats.combine_verdicts([R, R]) == R
    assert stats.combine_verdicts([R, I]) == I
    assert stats.combine_verdicts([R, N, I]) == N
    assert stats.combine_verdicts([]) == I


def test_a_verdict_needs_three_seeds():
    from tinyclip.studies.claims import compare

    a = {s: np.ones(20) for s in range(3)}
    b = {s: np.zeros(20) for s in range(3)}
    assert compare(a, b)["verdict"] == "reproduced" and not compare(a, b)["too_few_seeds"]
    two = compare({0: a[0], 1: a[1]}, {0: b[0], 1: b[1]})
    assert two["estimate"] == 100.0 and two["too_few_seeds"] and two["verdict"] == "inconclusive"


def test_verdict_sentences_for_every_kind_of_entry():
    from tinyclip.studies.claims import claim_entry, compare, verdict_sentence

    diff = compare({s: np.ones(5) for s in range(3)}, {s: np.zeros(5) for s in range(3)})
    ratio = compare({s: np.full(5, 0.5) for s in range(3)}, {0: np.ones(5)}, kind="ratio", threshold=0.95,
                    shared_b=True)
    assert "+100.00 points" in verdict_sentence(claim_entry("C2", verdict=diff["verdict"], comparison=diff,
                                                            metric="m", profile="smoke"))
    assert "ratio 0.500" in verdict_sentence(claim_entry("C8", verdict=ratio["verdict"], comparison=ratio,
                                                         metric="m", profile="smoke"))
    c9 = claim_entry("C9", verdict="reproduced", comparison=None, metric="m", profile="smoke", note="max 1 %.")
    c9["effect"] = 1.1
    assert "deterministic" in verdict_sentence(c9) and "reproduced" in verdict_sentence(c9)


def test_an_untrained_measurement_states_its_own_seed_rule():
    """C4's removals on one teacher resample items only (min_seeds=1): no "fewer than 3 seeds" caveat, a real verdict."""
    from tinyclip.studies.claims import claim_entry, compare, verdict_sentence

    rng = np.random.default_rng(0)
    one = compare({0: rng.random(400) < 0.8}, {0: rng.random(400) < 0.2}, min_seeds=1)
    assert one["verdict"] == "reproduced" and one["min_seeds"] == 1
    sentence = verdict_sentence(claim_entry("C4", verdict=one["verdict"], comparison=one, metric="m", profile="smoke"))
    assert ", 1 seed;" in sentence and "fewer than" not in sentence
    three = compare({0: rng.random(400) < 0.8}, {0: rng.random(400) < 0.2})   # the default rule still needs 3
    assert "fewer than the 3" in verdict_sentence(claim_entry("C1", verdict=three["verdict"], comparison=three,
                                                              metric="m", profile="smoke"))
