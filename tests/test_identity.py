"""Identities cannot go stale: every input that decides a run's (or a cache's) content is in its identity, and
nothing else is. One case per input: change it and the identity changes; change nothing and it is the same (so a
finished run or a filled cache is reused)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tinyclip.recipe import parse_recipe, resolve_recipe
from tinyclip.runner import run_recipe
from tinyclip.runs import config_hash
from recipe_edit import with_value

BASE: dict[str, Any] = {
    "name": "identity", "seed": 0,
    "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": "TEACHER"},
    "defaults": {"data": {"profile": "smoke", "augment": False}, "batch": 16, "lr": 1e-3, "warmup": 2,
                 "checkpoint_every": 10, "log_every": 5},
    "stages": [{"name": "S75", "student": "TinyCLIP-smoke-S75", "init": "teacher", "steps": 3},
               {"name": "S50", "student": "TinyCLIP-smoke-S50", "init": "previous", "steps": 3}],
}


def _hashes(raw: dict) -> list[str]:
    return [config_hash(c) for c in resolve_recipe(parse_recipe(copy.deepcopy(raw)), device="cpu")]


@pytest.fixture
def base(env) -> dict:
    return with_value(BASE, "teacher.weights", str(env / "teacher.pt"))


CHANGES = [   # (input, path in the recipe, new value)
    ("seed", "seed", 1),
    ("learning rate", "defaults.lr", 2e-3),
    ("warm-up", "defaults.warmup", 1),
    ("weight decay", "defaults.weight_decay", 0.1),
    ("betas", "defaults.betas", [0.9, 0.95]),
    ("eps", "defaults.eps", 1e-7),
    ("gradient clip", "defaults.grad_clip", 1.0),
    ("batch", "defaults.batch", 8),
    ("steps", "stages.0.steps", 4),
    ("precision", "defaults.precision", "bf16"),
    ("logit scale", "defaults.logit_scale", {"mode": "learned", "max": 100}),
    ("loss", "defaults.loss", {"mode": "affinity", "affinity_reduction": "mean"}),
    ("augmentation", "defaults.data.augment", True),
    ("fixed views", "defaults.data.fixed_views", 2),
    ("mixture weights", "defaults.data.weights", {"tux": 1.0, "noto": 1.0}),
    ("depth rule", "defaults.inherit", {"depth_rule": "interval_front"}),
    ("student", "stages.1.student", "TinyCLIP-smoke-S75"),
    ("initialisation", "stages.0.init", "random"),
    ("evaluation sets", "defaults.eval", {"tasks": ["tux"]}),
    ("evaluation subset", "defaults.eval", {"max_items": 50}),
    ("teacher cache", "defaults.teacher_cache", True),
]


@pytest.mark.parametrize("name, path, value", CHANGES, ids=[c[0] for c in CHANGES])
def test_each_input_changes_the_run_identity(base, name, path, value):
    raw = with_value(base, path, value)
    if name == "teacher cache":
        raw = with_value(raw, "defaults.data.fixed_views", 2)
        base = with_value(base, "defaults.data.fixed_views", 2)
    assert _hashes(raw)[0] != _hashes(base)[0] or _hashes(raw)[1] != _hashes(base)[1]


def test_labels_do_not_change_the_identity(base):
    same = _hashes(base)
    assert _hashes(base) == same                                   # nothing changed: the same runs
    assert _hashes(with_value(base, "name", "renamed")) == same
    assert _hashes(with_value(base, "defaults.checkpoint_every", 3)) == same
    assert _hashes(with_value(base, "defaults.log_every", 1)) == same


def test_a_later_stage_follows_every_change_of_an_earlier_one(base):
    first, second = _hashes(base), _hashes(with_value(base, "stages.0.steps", 4))
    assert first[0] != second[0] and first[1] != second[1]   # stage 2 names stage 1's run


def test_teacher_weights_by_content_and_a_random_teacher_by_seed(base, env, tmp_path):
    moved = tmp_path / "same-weights.pt"
    shutil.copy(env / "teacher.pt", moved)
    assert _hashes(with_value(base, "teacher.weights", str(moved))) == _hashes(base)   # same bytes elsewhere: same
    state = torch.load(env / "teacher.pt")
    state["logit_scale"] = state["logit_scale"] + 1.0
    torch.save(state, tmp_path / "other.pt")
    assert _hashes(with_value(base, "teacher.weights", str(tmp_path / "other.pt"))) != _hashes(base)
    random = with_value(base, "teacher.weights", None)
    assert _hashes(with_value(random, "seed", 1)) != _hashes(random)   # its weights are a function of the seed


def _data_copy(env: Path, root: Path, content: str | None = None) -> Path:
    shutil.copytree(env / "smoke", root / "smoke")
    if content is not None:
        stamp = root / "smoke" / "build.json"
        stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "content": content}))
    return root


def test_data_identity_is_the_built_content(base, env, tmp_path, monkeypatch):
    """A rebuilt data set with the same settings fingerprint but other bytes is other data; a copy of the same
    build elsewhere is the same data."""
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(_data_copy(env, tmp_path / "copy")))
    same = _hashes(base)
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(_data_copy(env, tmp_path / "rebuilt", content="0" * 16)))
    rebuilt = _hashes(base)
    monkeypatch.setenv("TINYCLIP_DATA_ROOT", str(env))
    assert same == _hashes(base) and rebuilt[0] != same[0]


def test_lit_teacher_folder_follows_the_data_digest(env, tmp_path, monkeypatch):
    from tinyclip.lit import default_out_dir

    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    a = default_out_dir("smoke", 64, data_root=_data_copy(env, tmp_path / "a"))
    b = default_out_dir("smoke", 64, data_root=_data_copy(env, tmp_path / "b", content="f" * 16))
    assert a == default_out_dir("smoke", 64, data_root=env) and a != b


def _cached_recipe(tmp_path: Path, raw: dict, tag: str) -> Path:
    raw = with_value(with_value(raw, "defaults.data.fixed_views", 2), "defaults.teacher_cache", True)
    raw = with_value(raw, "stages", raw["stages"][:1])
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_teacher_cache_identity_follows_the_teacher_and_is_reused_otherwise(base, env, runs, tmp_path):
    from tinyclip.recipe import load_recipe

    def cache_of(raw: dict, tag: str) -> dict:
        (summary,) = run_recipe(load_recipe(_cached_recipe(tmp_path, raw, tag)), force=True)
        return summary["teacher_cache"]

    first = cache_of(base, "base")
    again = cache_of(with_value(base, "defaults.lr", 5e-4), "other-lr")   # a student setting: the same embeddings
    assert again["path"] == first["path"] and again["misses"] == 0 and again["hits"] == first["misses"]
    state = torch.load(env / "teacher.pt")
    state["visual.proj"] = state["visual.proj"] * 2
    torch.save(state, tmp_path / "other-teacher.pt")
    other = cache_of(with_value(base, "teacher.weights", str(tmp_path / "other-teacher.pt")), "other-teacher")
    assert other["path"] != first["path"] and other["hits"] == 0
    random = with_value(base, "teacher.weights", None)
    seeds = {cache_of(with_value(random, "seed", s), f"random-{s}")["path"] for s in (0, 1)}
    assert len(seeds) == 2                                          # a random teacher's embeddings follow its seed
    bf16 = cache_of(with_value(base, "defaults.precision", "bf16"), "bf16")
    assert bf16["path"] != first["path"]                            # the numerics change the embeddings
