"""Tests for tinyclip.recipe: parsing, defaults, validation, resolution and the run identity."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tinyclip.errors import TinyCLIPError
from tinyclip.recipe import STAGE_DEFAULTS, adamw_hyper, load_recipe, parse_recipe, resolve_recipe
from tinyclip.runs import config_hash

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

BASE = {
    "name": "t",
    "seed": 1,
    "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": None},
    "defaults": {"data": {"profile": "smoke"}, "batch": 8, "lr": "1e-3", "warmup": 2},
    "stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 10},
               {"name": "b", "student": "TinyCLIP-smoke-S50", "init": "previous", "samples": 20}],
}


def recipe(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return parse_recipe(raw)


def test_defaults_and_coercion():
    r = recipe()
    a, b = r.stages
    assert a.lr == 1e-3 and isinstance(a.lr, float)          # YAML 1.1 reads 1e-3 as a string
    assert a.init == "teacher" and b.init == "previous"       # a teacher → inherit from it by default
    assert b.steps == 3                                       # ceil(20 samples / batch 8)
    assert a.weight_decay == 0.2 and a.grad_clip == 5.0       # official defaults
    assert a.logit_scale == {"mode": "fixed", "value": 50.0}
    assert a.loss["affinity"] == 1.0 and a.loss["contrastive"] == 0.0
    assert a.inherit == {"depth_rule": "even", "width_rule": "leading"}
    fraction = recipe(defaults={**BASE["defaults"], "warmup": 0.25})
    assert fraction.stages[0].warmup_steps == 2               # round(0.25 · 10)
    assert recipe(teacher="none").stages[0].init == "random"
    assert STAGE_DEFAULTS["lr"] == 1e-4                       # the module constant is not mutated by merging


def test_adamw_betas_follow_the_vision_tower():
    r = recipe()
    from tinyclip.recipe import model_cfg_of
    assert adamw_hyper(r.stages[0], model_cfg_of("TinyCLIP-smoke-S75")) == ((0.9, 0.98), 1e-6)
    assert adamw_hyper(r.stages[0], model_cfg_of("TinyCLIP-ResNet-19M-Text-19M")) == ((0.9, 0.999), 1e-8)
    custom = recipe(defaults={**BASE["defaults"], "betas": [0.8, 0.9], "eps": 1e-7})
    assert adamw_hyper(custom.stages[0], model_cfg_of("TinyCLIP-smoke-S75")) == ((0.8, 0.9), 1e-7)


@pytest.mark.parametrize("change, message", [
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "lrr": 1}]}, "unknown keys"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75"}]}, "exactly one of steps"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "init": "previous"}]},
     "needs a previous stage"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "lr": -1}]}, "lr must be positive"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "kind": "auto",
                  "auto": {"target_sparsity": 1.0}}]}, r"target_sparsity must lie in \[0, 1\)"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "kind": "auto",
                  "auto": {"target_sparsity": 0.5, "start_sparsity": -0.1}}]}, "start_sparsity must lie"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "loss": "nonsense"}]}, "loss"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "teacher_cache": True}]},
     "fixed_views > 0"),
    ({"stages": [{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "precision": "fp8"}]}, "precision"),
    ({"teacher": {"model": "ViT-B-32"}}, "say which weights"),
    ({"stages": []}, "non-empty list"),
    ({"extra": 1}, "unknown top-level keys"),
])
def test_bad_recipes_are_one_line_errors(change, message):
    with pytest.raises(TinyCLIPError, match=message) as info:
        recipe(**change)
    assert "\n" not in str(info.value)


def test_resolved_identity(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(tmp_path))  # no data fingerprint: identity from the recipe only
    configs = resolve_recipe(recipe(), device="cpu")
    a, b = configs
    assert a["init"] == {"from": "teacher", "inherit": {"depth_rule": "even", "width_rule": "leading"}}
    assert b["init"]["from"] == "previous" and b["init"]["run"] == config_hash(a)   # chained by run hash
    assert a["precision"] == "fp32" and a["optim"]["betas"] == [0.9, 0.98] and a["optim"]["eps"] == 1e-6
    assert a["teacher"]["kind"] == "model" and a["teacher"]["weights"] is None
    # labels and cadences are not identity; hyper-parameters are
    relabelled = copy.deepcopy(BASE)
    relabelled["name"] = "other"
    relabelled["stages"][0].update(name="renamed", checkpoint_every=3, log_every=2)
    assert [config_hash(c) for c in resolve_recipe(parse_recipe(relabelled), device="cpu")] == \
        [config_hash(c) for c in configs]
    changed = resolve_recipe(recipe(seed=2), device="cpu")
    assert config_hash(changed[0]) != config_hash(a)
    # stage b's identity depends on stage a's: changing a's lr changes both hashes
    slower = copy.deepcopy(BASE)
    slower["stages"][0]["lr"] = 1e-4
    c = resolve_recipe(parse_recipe(slower), device="cpu")
    assert config_hash(c[0]) != config_hash(a) and config_hash(c[1]) != config_hash(b)


# the keys of a resolved stage before the optional ones (compile) existed, and the synthetic recipe's run hashes
# then (empty data root): a stage that does not ask for an optional key must keep the run it had
PLAIN_KEYS = {"format", "kind", "student", "teacher", "init", "loss", "data", "steps", "batch", "optim", "precision",
              "device", "world_size", "logit_scale", "eval", "teacher_cache", "auto", "seed"}
PLAIN_HASHES = ["e2d46639a84b", "294a42371a80"]


def test_compile_switch_is_run_identity_only_when_true(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(tmp_path))
    assert [s.compile for s in recipe().stages] == [False, False] and STAGE_DEFAULTS["compile"] is False
    plain = resolve_recipe(recipe(), device="cpu")
    assert [set(c) for c in plain] == [PLAIN_KEYS, PLAIN_KEYS]
    assert [config_hash(c) for c in plain] == PLAIN_HASHES
    off = resolve_recipe(recipe(defaults={**BASE["defaults"], "compile": False}), device="cpu")
    assert [config_hash(c) for c in off] == PLAIN_HASHES
    on_raw = copy.deepcopy(BASE)
    on_raw["stages"][0]["compile"] = True
    on = parse_recipe(on_raw)
    assert [s.compile for s in on.stages] == [True, False]
    a, b = resolve_recipe(on, device="cuda")
    assert a["compile"] is True and "compile" not in b
    a_cpu, b_cpu = resolve_recipe(on, device="cpu")
    assert config_hash(a_cpu) != PLAIN_HASHES[0] and config_hash(b_cpu) != PLAIN_HASHES[1]  # b chains on a
    with pytest.raises(TinyCLIPError, match="compile: expected true or false, got 'yes'"):
        recipe(defaults={**BASE["defaults"], "compile": "yes"})


def test_shipped_mini_recipes_keep_their_run_hashes():
    """recipes/mini_*.yaml resolve to the same runs with ``compile: false`` written out as without it (those
    whose LiT teacher or data is not built here are left out: their identity needs the build)."""
    checked = 0
    for path in sorted(RECIPES.glob("mini_*.yaml")):
        try:
            shipped = resolve_recipe(load_recipe(path), device="cpu", world_size=1)
        except TinyCLIPError as exc:
            if "not built" in str(exc):
                continue
            raise
        raw = yaml.safe_load(path.read_text())
        raw["defaults"] = {**raw.get("defaults", {}), "compile": False}
        explicit = resolve_recipe(parse_recipe(raw, path=path), device="cpu", world_size=1)
        assert all("compile" not in c for c in shipped), path
        assert [config_hash(c) for c in explicit] == [config_hash(c) for c in shipped], path
        checked += 1
    if not checked:
        pytest.skip("no mini recipe resolves here (LiT teacher / mini data not built)")


def test_shipped_recipes_parse():
    for path in sorted(RECIPES.glob("*.yaml")):
        r = load_recipe(path)
        assert r.stages, path
    manual = load_recipe(RECIPES / "smoke_manual.yaml")
    assert manual.teacher.kind == "train" and Path(manual.teacher.recipe) == RECIPES / "smoke_teacher.yaml"
    assert [s.init for s in manual.stages] == ["teacher", "previous"]


def test_yaml_errors(tmp_path):
    with pytest.raises(TinyCLIPError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(TinyCLIPError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump(["a list"]))
    with pytest.raises(TinyCLIPError, match="mapping at the top level"):
        load_recipe(bad)


def test_epochs_count_the_training_shards(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(tmp_path))
    (tmp_path / "smoke" / "train").mkdir(parents=True)
    (tmp_path / "smoke" / "train" / "sizes.json").write_text('{"a.tar": 300, "b.tar": 212}')
    r = recipe(stages=[{"name": "a", "student": "TinyCLIP-smoke-S75", "epochs": 2}])
    assert r.stages[0].steps == 128  # ceil(2 · 512 / batch 8)
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(tmp_path / "empty"))
    with pytest.raises(TinyCLIPError, match="sizes.json"):
        recipe(stages=[{"name": "a", "student": "TinyCLIP-smoke-S75", "epochs": 2}])


def test_init_from_another_recipes_run_is_named_by_its_hash(monkeypatch, tmp_path):
    from tinyclip.recipe import prerequisite_recipes

    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(tmp_path))
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump(BASE))
    raw = copy.deepcopy(BASE)
    raw["stages"] = [{"name": "c", "student": "TinyCLIP-smoke-S50", "init": {"train": "source.yaml"}, "steps": 5}]
    path = tmp_path / "main.yaml"
    path.write_text(yaml.safe_dump(raw))
    main = load_recipe(path)
    assert (main.stages[0].init, main.stages[0].init_recipe) == ("run", str(source))   # relative to the recipe
    assert [r.path for r in prerequisite_recipes(main)] == [source]
    (config,) = resolve_recipe(main, device="cpu")
    assert config["init"] == {"from": "run", "run": config_hash(resolve_recipe(load_recipe(source), device="cpu")[-1]),
                              "inherit": {"depth_rule": "even", "width_rule": "leading"}}
    # the source's training is part of this run's identity: another source run, another run here
    source.write_text(yaml.safe_dump({**BASE, "seed": 7}))
    assert config_hash(resolve_recipe(load_recipe(path), device="cpu")[0]) != config_hash(config)
    raw["stages"][0]["init"] = {"train": "main.yaml"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TinyCLIPError, match="its own recipe's run"):
        load_recipe(path)


@pytest.mark.parametrize("init, message", [
    ({"train": ""}, r"needs a recipe file"),
    ({"train": "x.yaml", "weights": None}, r"\{model: NAME, weights: FILE\|TAG\} or \{train: RECIPE\}"),
    ("somewhere", r"or \{train: RECIPE\}, got 'somewhere'"),
])
def test_bad_init_mappings_are_one_line_errors(init, message):
    with pytest.raises(TinyCLIPError, match=message) as info:
        recipe(stages=[{"name": "a", "student": "TinyCLIP-smoke-S75", "steps": 1, "init": init}])
    assert "\n" not in str(info.value)
