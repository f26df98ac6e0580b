"""Evaluation during training (tinyclip.curve, recipe ``eval.every``): the schedule leaves training untouched (same
weights with and without it, also in an auto stage whose masks draw from torch's generator every step), every point
keeps per-item outcomes, a resumed run ends with the same curve, and the schedule is part of the run identity."""
from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tinyclip import curve
from tinyclip.errors import TinyCLIPError
from tinyclip.recipe import load_recipe, resolve_recipe
from tinyclip.runner import run_recipe
from tinyclip.runs import Run, config_hash

FAST_MASKS = {"mask_lr": 0.3, "lagrangian_lr": 0.3, "sparsity_warmup": 2}


def write_recipe(folder: Path, env: Path, every: int, auto: bool = False) -> Path:
    """A 6-step smoke stage (manual S75, or an auto stage masking the teacher), checkpoints every 3 steps."""
    stage = {"name": "S", "student": "TinyCLIP-smoke-S75", "steps": 6}
    if auto:
        stage = {"name": "A", "kind": "auto", "student": "TinyCLIP-smoke-teacher", "steps": 6,
                 "auto": {"target_sparsity": 0.25, "mask_steps": 4, **FAST_MASKS}}
    raw = {"name": "curve", "seed": 0,
           "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")},
           "defaults": {"data": {"profile": "smoke", "augment": True}, "batch": 16, "lr": 1e-3, "warmup": 2,
                        "checkpoint_every": 3, "log_every": 1,
                        "eval": {"tasks": ["tux", "fmnist"], "max_items": 32, "every": every}},
           "stages": [stage]}
    path = folder / f"curve-{every}-{auto}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def state(summary: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    model_dir = Path(summary["model_dir"])
    return load_file(next(model_dir.glob("*.safetensors")))


def assert_same_weights(a: dict, b: dict) -> None:
    wa, wb = state(a), state(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "an evaluation schedule changed the trained weights"


@pytest.mark.parametrize("auto", [False, True], ids=["manual", "auto"])
def test_an_eval_schedule_does_not_change_training(env, runs, tmp_path, auto):
    plain = run_recipe(load_recipe(write_recipe(tmp_path, env, 0, auto)))[0]
    scheduled = run_recipe(load_recipe(write_recipe(tmp_path, env, 2, auto)))[0]
    assert plain["run"] != scheduled["run"]  # the schedule is part of the identity
    assert_same_weights(plain, scheduled)
    assert plain["metrics"] == scheduled["metrics"] and plain["train"] == scheduled["train"]
    assert not (Path(plain["run_dir"]) / curve.CURVE_DIR).exists()


def test_without_restoring_the_generators_the_auto_stage_would_drift(env, runs, tmp_path, monkeypatch):
    """The control for the test above: an evaluation draws from torch's generator (its data loader's seed), and
    the masks of an auto stage sample from it, so the restore in curve.kept_rng is what keeps the weights equal."""
    plain = run_recipe(load_recipe(write_recipe(tmp_path, env, 0, auto=True)))[0]
    monkeypatch.setattr(curve, "kept_rng", contextlib.nullcontext)
    drifted = run_recipe(load_recipe(write_recipe(tmp_path, env, 2, auto=True)))[0]
    wa, wb = state(plain), state(drifted)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_every_point_keeps_per_item_outcomes(env, runs, tmp_path):
    summary = run_recipe(load_recipe(write_recipe(tmp_path, env, 2)))[0]
    run_dir = Path(summary["run_dir"])
    assert sorted(p.name for p in (run_dir / curve.CURVE_DIR).iterdir()) == [
        "0000000.json", "0000002.json", "0000004.json"]
    points = curve.read_curve(run_dir)
    assert [p["step"] for p in points] == [0, 2, 4, 6] and [p["samples"] for p in points] == [0, 32, 64, 96]
    final = json.loads((run_dir / "eval_items.json").read_text())
    assert points[-1]["items"] == final and points[-1]["metrics"] == summary["metrics"]
    for point in points:
        assert set(point["items"]) == {"tux", "fmnist"}
        assert len(point["items"]["fmnist"]["correct"]) == len(final["fmnist"]["correct"]) == 32
        # the outcomes reproduce the point's own metric
        assert np.mean(point["items"]["fmnist"]["correct"]) == pytest.approx(point["metrics"]["fmnist"]["acc1"])
    assert all(p["eval_s"] >= 0 for p in points[:-1])
    logged = [r for r in Run(resolve_recipe(load_recipe(write_recipe(tmp_path, env, 2)))[0]).read_metrics()
              if "eval" in r]
    assert [(r["step"], r.get("samples")) for r in logged] == [(-1, 0), (1, 32), (3, 64), (5, None)]


class Interrupt(Exception):
    pass


def test_a_resumed_run_ends_with_the_same_curve(env, runs, tmp_path, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, env, 2))
    full = curve.read_curve(run_recipe(recipe)[0]["run_dir"])
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs-b"))

    def crash(step, record):
        if step == 4:  # after the point at 4 steps; the checkpoint holds 3
            raise Interrupt
    with pytest.raises(Interrupt):
        run_recipe(recipe, on_step=crash)
    resumed = curve.read_curve(run_recipe(recipe, resume=True)[0]["run_dir"])
    strip = [{k: v for k, v in p.items() if k != "eval_s"} for p in resumed]
    assert strip == [{k: v for k, v in p.items() if k != "eval_s"} for p in full]


def test_the_schedule_is_part_of_the_identity_only_when_set(env, tmp_path):
    with_schedule = config_hash(resolve_recipe(load_recipe(write_recipe(tmp_path, env, 2)), device="cpu")[0])
    without = config_hash(resolve_recipe(load_recipe(write_recipe(tmp_path, env, 0)), device="cpu")[0])
    assert with_schedule != without
    raw = yaml.safe_load(write_recipe(tmp_path, env, 0).read_text())
    del raw["defaults"]["eval"]["every"]  # the default (0) resolves like a recipe written before curves existed
    path = tmp_path / "no-every.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert config_hash(resolve_recipe(load_recipe(path), device="cpu")[0]) == without


def test_kept_rng_restores_every_generator():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with curve.kept_rng():
        random.random(), np.random.rand(), torch.rand(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_reading_the_curve_of_an_unfinished_run_fails_in_one_line(tmp_path):
    with pytest.raises(TinyCLIPError, match="has not finished"):
        curve.read_curve(tmp_path)
