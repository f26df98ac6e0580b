"""Claim C6's study (tinyclip.studies.multistage): the 25 % students, the recipes' shared stages and equal budgets,
the manual allocation drawn beside the learned ones, and the verdict over both inheritance modes."""
from __future__ import annotations

import pytest
import yaml

from tinyclip import stats, zoo
from tinyclip.errors import TinyCLIPError
from tinyclip.inherit.manual import check_inheritable
from tinyclip.recipe import load_recipe, resolve_recipe
from tinyclip.runs import config_hash
from tinyclip.studies import multistage as ms
from tinyclip.studies.common import recipe_path

PROFILES = ("smoke", "mini")


@pytest.fixture(autouse=True)
def scratch_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))  # materialized arm recipes land here


def _params(name: str) -> dict[str, int]:
    return zoo.count_params(zoo.build_shape_model(name))


@pytest.mark.parametrize("profile", PROFILES)
def test_s25_halves_the_vision_width_and_quarters_the_text_depth(profile):
    teacher, s50, s25 = (zoo.model_config(f"TinyCLIP-{profile}-{n}") for n in ("teacher", "S50", "S25"))
    assert s25["vision_cfg"]["width"] * 2 == teacher["vision_cfg"]["width"]
    assert s25["text_cfg"]["layers"] * 4 == teacher["text_cfg"]["layers"]
    share = _params(f"TinyCLIP-{profile}-S25")["total"] / _params(f"TinyCLIP-{profile}-teacher")["total"]
    assert 0.24 < share < 0.29
    assert _params(f"TinyCLIP-{profile}-S25")["total"] < _params(f"TinyCLIP-{profile}-S50")["total"]
    check_inheritable(teacher, s25)   # the single stage: straight from the teacher
    check_inheritable(s50, s25)       # the chain's last stage


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("mode", ms.MODES)
def test_chain_begins_with_the_base_recipes_runs(profile, mode, monkeypatch):
    # the teacher's identity needs its built inputs (mini: the LiT teacher); any fixed value serves both recipes
    monkeypatch.setattr("tinyclip.recipe.teacher_identity", lambda recipe, **_: {"kind": "fixed", "seed": recipe.seed})
    chain_name, _, base_name = ms.RECIPES[mode]
    chain = [config_hash(c) for c in resolve_recipe(load_recipe(recipe_path(profile, chain_name)), device="cpu")]
    base = [config_hash(c) for c in resolve_recipe(load_recipe(recipe_path(profile, base_name)), device="cpu")]
    assert len(chain) == len(base) + 1 and chain[:len(base)] == base


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("mode", ms.MODES)
def test_single_stage_has_the_chains_budget_and_final_size(profile, mode):
    chain_name, single_name, _ = ms.RECIPES[mode]
    chain, single = (load_recipe(recipe_path(profile, n)) for n in (chain_name, single_name))
    (stage,), last = single.stages, chain.stages[-1]
    assert stage.init == "teacher" and stage.steps == sum(s.steps for s in chain.stages)
    assert stage.lr == last.lr and stage.batch == last.batch and stage.loss == last.loss
    if mode == "manual":
        assert stage.student == last.student == f"TinyCLIP-{profile}-S25"
    else:
        target = round(1 - _params(f"TinyCLIP-{profile}-S25")["total"] / _params(f"TinyCLIP-{profile}-teacher")["total"], 4)
        assert stage.auto["target_sparsity"] == last.auto["target_sparsity"] == target
        assert last.auto["start_sparsity"] == chain.stages[-2].auto["target_sparsity"]
        for key in ("mask_steps", "sparsity_warmup"):
            assert stage.auto[key] == sum(s.auto[key] for s in chain.stages)


@pytest.mark.parametrize("scale", [1.0, 0.1, 0.37])
def test_arms_keep_the_budgets_equal_at_every_scale(scale):
    study = ms.arms("mini", budget_scale=scale)
    assert [a.key for a in study] == ["manual_chain", "manual_single", "auto_chain", "auto_single"]
    if scale == 1.0:  # the recipe files as they are: their runs are the ones other studies share
        assert all(not a.overrides and a.steps_scale == 1.0 for a in study)
    rows = {r["arm"]: r for r in ms.design_rows(study)}
    for mode in ms.MODES:
        chain, single = rows[f"{mode}_chain"], rows[f"{mode}_single"]
        assert chain["steps"] == single["steps"] and chain["pairs"] == single["pairs"]
        assert chain["mask_steps"] == single["mask_steps"]
        assert chain["final_share"] == pytest.approx(single["final_share"])
    assert rows["manual_chain"]["final_share"] == pytest.approx(rows["auto_chain"]["final_share"], abs=1e-4)


def _edited(tmp_path, profile: str, name: str, edit) -> str:
    raw = yaml.safe_load(recipe_path(profile, name).read_text())
    raw["teacher"]["train"] = str(recipe_path(profile, "teacher"))
    edit(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_chain_that_drifts_from_its_base_or_a_mismatched_single_stage_is_refused(tmp_path):
    base = load_recipe(recipe_path("smoke", "manual"))
    ms.check_shared_stages(load_recipe(recipe_path("smoke", "multistage_chain")), base)
    drifted = _edited(tmp_path, "smoke", "multistage_chain", lambda r: r["stages"][1].update(steps=199))
    with pytest.raises(TinyCLIPError, match="first difference: S50"):
        ms.check_shared_stages(load_recipe(drifted), base)
    chain = load_recipe(recipe_path("smoke", "multistage_chain"))
    other = _edited(tmp_path, "smoke", "multistage_single", lambda r: r["stages"][0].update(student="TinyCLIP-smoke-S50"))
    with pytest.raises(TinyCLIPError, match="TinyCLIP-smoke-S25"):
        ms.check_single(load_recipe(other), chain)
    auto_chain = load_recipe(recipe_path("smoke", "multistage_auto_chain"))
    off_target = _edited(tmp_path, "smoke", "multistage_auto_single",
                         lambda r: r["stages"][0]["auto"].update(target_sparsity=0.7))
    with pytest.raises(TinyCLIPError, match="final target 0.7282"):
        ms.check_single(load_recipe(off_target), auto_chain)


@pytest.mark.parametrize("profile", PROFILES)
def test_manual_allocation_is_the_s25_architecture(profile):
    arch = ms.manual_architecture(f"TinyCLIP-{profile}-teacher", f"TinyCLIP-{profile}-S25")
    assert arch["params"] == _params(f"TinyCLIP-{profile}-S25")["total"]
    teacher = _params(f"TinyCLIP-{profile}-teacher")
    assert arch["sparsity"] == pytest.approx(1 - arch["params"] / teacher["total"])
    text = arch["text"]["layers"]
    kept = [i for i, l in enumerate(text) if not l["attn_dropped"] and not l["mlp_dropped"]]
    assert kept == {"mini": [0, 7], "smoke": [0]}[profile]   # depth rule "even": first and last of 8; layer 0 of 4
    (row,) = ms.allocation_rows({"manual": [arch]}, teacher)
    assert row["vision_hidden"] == f"{arch['vision']['hidden']}/{2 * arch['vision']['hidden']}"
    assert row["vision_share"] == pytest.approx(arch["vision"]["params"] / teacher["vision"])
    assert row["text_sublayers_dropped"] == 2 * sum(l["attn_dropped"] for l in text)
    with pytest.raises(TinyCLIPError, match="head width"):
        ms.manual_architecture(f"TinyCLIP-{profile}-teacher", "TinyCLIP-ViT-40M-32-Text-19M")


def _comparison(mode: str, estimate: float, low: float, high: float, metric: str = "fmnist") -> dict:
    verdict = stats.verdict(low, high)
    return {"claim": "C6", "mode": mode, "a": f"{mode}_chain", "b": f"{mode}_single", "metric": metric,
            "estimate": estimate, "ci_low": low, "ci_high": high, "n_seeds": 3, "kind": "difference",
            "threshold": 0.0, "detectable": 1.0, "verdict": verdict}


def test_c6_needs_the_chain_to_win_for_both_modes():
    manual_win, auto_win = _comparison("manual", 2.0, 1.0, 3.0), _comparison("auto", 1.0, 0.5, 1.5)
    both = ms.c6_entry([manual_win, auto_win, _comparison("auto", -9.0, -10.0, -8.0, "retrieval")], "smoke")
    assert both["verdict"] == stats.REPRODUCED
    assert both["effect"] == 1.0 and "headline" in both["note"] and "(auto)" in both["note"]  # the weaker mode
    assert len(both["details"]) == 3   # the secondary metric is kept, not judged
    auto_loses = ms.c6_entry([manual_win, _comparison("auto", -2.0, -3.0, -1.0)], "smoke")
    assert auto_loses["verdict"] == stats.NOT_REPRODUCED and auto_loses["effect"] == -2.0
    assert ms.c6_entry([manual_win, _comparison("auto", 0.5, -0.5, 1.5)], "smoke")["verdict"] == stats.INCONCLUSIVE
    only_manual = ms.c6_entry([manual_win], "smoke")
    assert only_manual["verdict"] == stats.INCONCLUSIVE and "auto not finished" in only_manual["note"]
    assert ms.c6_entry([], "smoke") is None


def test_an_arms_size_is_the_mean_of_its_runs(monkeypatch):
    """A learned mask lands each seed at its own size: the scores table reports their mean, not the first seed's."""
    from tinyclip.studies import common

    sizes = {0: 3_438_000, 1: 3_278_000, 2: 3_319_000}
    arm = common.Arm("auto_single", "auto one stage", "unused.yaml", "A25", {})
    monkeypatch.setattr(common, "arm_summary", lambda a, seed: {"params": {"total": sizes[seed]}, "seed": seed,
                                                                "train_s": 60.0 * (seed + 1)})
    monkeypatch.setattr(common, "run_items", lambda summary: {"fmnist": {"correct": [1, 0, 1, summary["seed"] % 2]}})
    [row] = common.score_rows([arm], [0, 1, 2], metrics=("fmnist",))
    assert row["params_m"] == pytest.approx(sum(sizes.values()) / 3 / 1e6)
    assert row["seeds"] == 3 and row["train_min"] == pytest.approx(2.0)
