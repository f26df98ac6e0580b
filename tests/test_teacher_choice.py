"""The teacher-choice study (claim C5, tinyclip/studies/teacher_choice.py): its arms and recipes, the contrasts of the
2 × 2 on synthetic outcomes with known answers, the computed reading, and the two views it adds. No training."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from tinyclip.errors import TinyCLIPError
from tinyclip.recipe import load_recipe
from tinyclip.studies import teacher_choice as tc
from tinyclip.studies import views
from tinyclip.studies.common import Arm, items_row, materialize

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
N_ITEMS = 400


def outcomes(means: dict[str, float], seeds=(0, 1, 2), noise: float = 0.0, seed: int = 0):
    """seed → per-item hits of each arm, with the arm's hit rate (plus a per-seed shift when ``noise``)."""
    rng = np.random.default_rng(seed)
    base = rng.random((len(seeds), N_ITEMS))  # one item difficulty draw shared by every arm (as real items are)
    out = {}
    for key, mean in means.items():
        shift = rng.normal(0, noise, len(seeds))
        out[key] = {s: (base[i] < mean + shift[i]).astype(float) for i, s in enumerate(seeds)}
    return out


# ----------------------------------------------------------------------------------------------- arms and recipes
def test_arms_are_the_shared_s50_recipe_and_its_lit_twin():
    arms = {a.key: a for a in tc.arms("smoke", budget_scale=0.5)}
    assert list(arms) == ["inh_own", "rand_own", "inh_lit", "rand_lit"]
    assert arms["inh_own"].recipe == str(RECIPES / "smoke_s50.yaml") and not arms["inh_own"].overrides
    assert arms["inh_lit"].recipe == str(RECIPES / "smoke_s50_lit.yaml") and not arms["inh_lit"].overrides
    assert arms["rand_own"].overrides == arms["rand_lit"].overrides == {"*": {"init": "random"}}
    assert {a.steps_scale for a in arms.values()} == {0.5} and {a.stage for a in arms.values()} == {"S50"}
    # at full budget the inherited own-teacher arm is the C1 affinity arm's recipe file itself (shared runs)
    assert materialize(tc.arms("smoke")[0]) == RECIPES / "smoke_s50.yaml"


def test_the_lit_arm_inherits_the_trained_own_teacher_and_distils_from_lit(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path))
    arms = {a.key: a for a in tc.arms("smoke", budget_scale=0.5)}
    inherited = load_recipe(materialize(arms["inh_lit"]))
    (stage,) = inherited.stages
    assert inherited.teacher.kind == "lit" and inherited.teacher.lit == {"profile": "smoke", "image_size": 32}
    assert stage.init == "run" and stage.init_recipe == str(RECIPES / "smoke_teacher.yaml")  # absolute after copy
    assert stage.steps == 100 and stage.teacher_cache and stage.data.fixed_views > 0
    assert load_recipe(materialize(arms["rand_lit"])).stages[0].init == "random"


def test_mini_lit_recipe_differs_from_mini_s50_only_in_teacher_and_initialisation():
    own, lit = load_recipe(RECIPES / "mini_s50.yaml"), load_recipe(RECIPES / "mini_s50_lit.yaml")
    assert own.teacher.kind == "train" and Path(own.teacher.recipe) == RECIPES / "mini_teacher.yaml"
    assert lit.teacher.kind == "lit" and lit.teacher.lit == load_recipe(RECIPES / "mini_teacher.yaml").teacher.lit
    (a,), (b,) = own.stages, lit.stages
    assert (a.init, b.init, b.init_recipe) == ("teacher", "run", str(RECIPES / "mini_teacher.yaml"))
    same = {f.name for f in dataclasses.fields(a)} - {"init", "init_recipe"}
    assert {k: getattr(a, k) for k in same} == {k: getattr(b, k) for k in same}


def test_family_teachers_add_inherited_arms_and_refuse_a_lit_recipe(tmp_path, monkeypatch):
    import tinyclip.studies.common as common

    monkeypatch.setattr(common, "RECIPES_DIR", tmp_path)
    for name in ("s50", "s50_lit", "teacher"):
        (tmp_path / f"smoke_{name}.yaml").write_text((RECIPES / f"smoke_{name}.yaml").read_text())
    (tmp_path / "smoke_wide.yaml").write_text((RECIPES / "smoke_teacher.yaml").read_text())
    arms = tc.arms("smoke", family_teachers=["wide"])
    extra = arms[-1]
    assert extra.key == "inh_wide" and extra.teacher == {"train": str(tmp_path / "smoke_wide.yaml")}
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    assert Path(load_recipe(materialize(extra)).teacher.recipe) == tmp_path / "smoke_wide.yaml"
    with pytest.raises(TinyCLIPError, match="distils from LiT"):
        tc.arms("smoke", family_teachers=["s50_lit"])
    with pytest.raises(TinyCLIPError, match="no 'nothere' recipe"):
        tc.arms("smoke", family_teachers=["nothere"])


def test_materialize_makes_a_relative_init_recipe_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    base = tmp_path / "recipes" / "r.yaml"
    base.parent.mkdir()
    (base.parent / "t.yaml").write_text((RECIPES / "smoke_teacher.yaml").read_text())
    raw = yaml.safe_load((RECIPES / "smoke_s50.yaml").read_text())
    raw["teacher"] = {"train": "t.yaml"}
    raw["stages"][0]["init"] = {"train": "t.yaml"}
    base.write_text(yaml.safe_dump(raw))
    out = yaml.safe_load(materialize(Arm("x", "x", str(base), "S50", {"*": {"lr": 1e-4}})).read_text())
    assert out["teacher"] == out["stages"][0]["init"] == {"train": str(base.parent / "t.yaml")}
    assert out["stages"][0]["lr"] == 1e-4


# ----------------------------------------------------------------------------------------------- contrasts
def test_combine_outcomes_weights_arms_on_their_common_seeds():
    a = {0: np.array([1.0, 0.0]), 1: np.array([1.0, 1.0])}
    b = {1: np.array([0.0, 1.0]), 2: np.array([1.0, 1.0])}
    out = tc.combine_outcomes([(0.5, "a"), (0.5, "b")], {"a": a, "b": b})
    assert list(out) == [1] and out[1].tolist() == [0.5, 1.0]
    assert tc.combine_outcomes([(1, "a"), (1, "missing")], {"a": a}) == {}
    assert tc.side_name([(0.5, "a"), (0.5, "b")]) == "½(a + b)"
    assert tc.side_name([(1, "a"), (1, "b")]) == "(a + b)" and tc.side_name([(1, "a")]) == "a"


def test_contrasts_of_the_two_by_two_have_their_known_values():
    # inheritance helps by 20 points under the own teacher and by 5 under LiT; LiT is better from scratch by 5
    rates = {"inh_own": 0.70, "rand_own": 0.50, "inh_lit": 0.60, "rand_lit": 0.55}
    data = outcomes(rates)
    means = {k: 100 * np.mean([v.mean() for v in o.values()]) for k, o in data.items()}
    got = {c["claim"]: c for c in tc.contrasts(data, "fmnist")}
    assert list(got) == list(tc.CONTRASTS)
    expected = {
        "C5": means["inh_own"] - means["inh_lit"],
        "teacher | random": means["rand_own"] - means["rand_lit"],
        "teacher (main)": (means["inh_own"] + means["rand_own"] - means["inh_lit"] - means["rand_lit"]) / 2,
        "inheritance | own": means["inh_own"] - means["rand_own"],
        "inheritance | LiT": means["inh_lit"] - means["rand_lit"],
        "inheritance (main)": (means["inh_own"] + means["inh_lit"] - means["rand_own"] - means["rand_lit"]) / 2,
        "interaction": (means["inh_own"] - means["rand_own"]) - (means["inh_lit"] - means["rand_lit"]),
    }
    for name, value in expected.items():
        assert got[name]["estimate"] == pytest.approx(value), name
        assert got[name]["ci_low"] <= got[name]["estimate"] <= got[name]["ci_high"]
    assert got["C5"]["verdict"] == "reproduced" and got["interaction"]["verdict"] == "reproduced"
    assert got["teacher | random"]["verdict"] == "not reproduced"
    assert got["interaction"]["a"] == "(inh_own + rand_lit)" and got["interaction"]["b"] == "(rand_own + inh_lit)"


def test_contrasts_skip_unfinished_arms_and_add_family_teachers():
    data = outcomes({"inh_own": 0.7, "rand_own": 0.5, "inh_lit": 0.6, "inh_big": 0.65})
    names = [c["claim"] for c in tc.contrasts(data, "fmnist", family_teachers=["big"])]
    # rand_lit has not finished: every contrast that needs it is left out
    assert names == ["C5", "inheritance | own", "big vs LiT", "big vs own"]
    two_seeds = outcomes({"inh_own": 0.9, "inh_lit": 0.1}, seeds=(0, 1))
    (head,) = tc.contrasts(two_seeds, "fmnist")
    assert head["verdict"] == "inconclusive" and head["too_few_seeds"]   # fewer than 3 seeds carry no verdict


# ----------------------------------------------------------------------------------------------- the reading
def _primary(rates: dict[str, float], noise: float = 0.0) -> dict:
    return {c["claim"]: c for c in tc.contrasts(outcomes(rates, noise=noise), "fmnist")}


def _teachers(own: float, lit: float) -> list[dict]:
    return [{"arm": "own_teacher", "seeds": 1, "fmnist": own}, {"arm": "lit_teacher", "seeds": 1, "fmnist": lit}]


def test_interpretation_is_computed_from_the_contrasts():
    primary = _primary({"inh_own": 0.70, "rand_own": 0.50, "inh_lit": 0.60, "rand_lit": 0.55})
    text = tc.interpretation(primary, _teachers(68.1, 87.5), "mini")
    assert "LiT teacher scores 87.5 % on Fashion-MNIST and the mini teacher 68.1 % (+19.4 points)" in text
    assert "the stronger teacher, as designed" in text
    assert f"{primary['C5']['estimate']:+.2f} points" in text and "learns more from the mini teacher" in text
    assert "larger with the similar teacher" in text and f"{primary['interaction']['ci_low']:+.2f}" in text
    assert "not harder to mimic" in text                  # LiT wins from random weights in this data
    flipped = tc.interpretation(_primary({"inh_own": 0.55, "rand_own": 0.50, "inh_lit": 0.70, "rand_lit": 0.45}),
                                _teachers(70.0, 60.0), "mini")
    assert "not the stronger teacher here" in flipped and "learns more from the stronger LiT teacher" in flipped
    assert "smaller with the similar teacher" in flipped and "easier teacher to learn from" in flipped
    assert tc.interpretation({}, [], "mini").startswith("No reading yet")


def test_claim_note_names_the_teachers_gap_and_the_interaction():
    primary = _primary({"inh_own": 0.70, "rand_own": 0.50, "inh_lit": 0.60, "rand_lit": 0.55})
    note = tc._note(primary, _teachers(68.1, 87.5), "mini")
    assert "+19.4 points" in note and "Interaction" in note and primary["interaction"]["verdict"] in note


# ----------------------------------------------------------------------------------------------- rows and views
def test_items_row_scores_any_model_from_its_items():
    items = {"fmnist": {"correct": [1, 0, 1, 1]}}
    row = items_row("lit_teacher", "LiT", {0: items}, ["fmnist"], params_m=26.0)
    assert row["fmnist"] == pytest.approx(75.0) and row["seeds"] == 1 and row["params_m"] == 26.0
    assert row["fmnist_ci"][0] <= 75.0 <= row["fmnist_ci"][1] and row["fmnist_per_seed"] == {0: 75.0}


def test_two_way_table_and_interaction_figure():
    rows = [{"arm": k, "label": k, "seeds": 3, "fmnist": v, "fmnist_ci": (v - 1, v + 1)}
            for k, v in {"inh_own": 70.0, "rand_own": 50.0, "inh_lit": 60.0}.items()]
    layout = tc.layout("mini")
    table = views.two_way_table(rows, layout, "fmnist")
    assert list(table.index) == ["inherited", "random"]
    assert list(table.columns) == ["mimics the mini teacher", "mimics the LiT teacher"]
    assert table.loc["inherited", "mimics the mini teacher"] == "70.0 [69.0, 71.0]"
    assert table.loc["random", "mimics the LiT teacher"] == "–"      # not finished yet
    fig = views.interaction_figure(rows, layout, metrics=["fmnist"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["inherited", "random"] and len(ax.lines) >= 2
    assert views.interaction_figure([], layout) is None


def test_interpretation_reads_nothing_from_too_few_seeds():
    primary = {c["claim"]: c for c in tc.contrasts(
        outcomes({"inh_own": 0.70, "rand_own": 0.50, "inh_lit": 0.60, "rand_lit": 0.55}, seeds=(0, 1)), "fmnist")}
    text = tc.interpretation(primary, [], "mini")
    assert text.count("with 2 seed(s) finished this is not read yet (a reading needs 3)") == 3
    assert "larger with the similar teacher" not in text and "not measurably different" not in text


def test_score_figure_puts_the_first_row_on_top_in_every_panel():
    rows = [{"arm": k, "label": k, "seeds": 1, "fmnist": 50.0, "fmnist_ci": (49.0, 51.0), "retrieval": 30.0,
             "retrieval_ci": (29.0, 31.0)} for k in ("first", "second", "third")]
    for metrics in (["fmnist"], ["fmnist", "retrieval"]):
        fig = views.score_figure(rows, metrics=metrics)
        for ax in fig.axes:
            bottom, top = ax.get_ylim()
            assert top < bottom, metrics      # y grows downwards: row 0 ("first") is drawn at the top
