"""Hostile inputs: each is one line on stderr naming what is wrong (and what to do), exit code 2, no traceback,
and no file created or changed anywhere under the scratch roots. Table-driven: one row per case.

Every case runs the real command line in-process (``tinyclip.cli.main``): an exception other than the library's
one-line error would escape and fail the test, as a traceback would reach the user.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from tinyclip import cli
from recipe_edit import with_value

BASE: dict[str, Any] = {
    "name": "hostile",
    "seed": 0,
    "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": "TEACHER"},
    "defaults": {"data": {"profile": "smoke", "augment": False}, "batch": 8, "lr": 1.0e-3, "warmup": 1,
                 "checkpoint_every": 2, "log_every": 1, "eval": {"max_items": 16}},
    "stages": [{"name": "S75", "student": "TinyCLIP-smoke-S75", "init": "teacher", "steps": 3}],
}


class Case:
    """A hostile input: ``setup(scratch, env)`` returns the argv (files it makes are part of the input)."""

    def __init__(self, name: str, setup: Callable[[Path, Path], list[str]], expect: str):
        self.name, self.setup, self.expect = name, setup, expect

    def __repr__(self) -> str:
        return self.name


def recipe_case(name: str, expect: str, change: Callable[[dict], dict] | None = None, text: str | None = None):
    def setup(scratch: Path, env: Path) -> list[str]:
        path = scratch / "recipe.yaml"
        if text is not None:
            path.write_text(text)
        else:
            recipe = with_value(BASE, "teacher.weights", str(env / "teacher.pt"))
            path.write_text(yaml.safe_dump(change(recipe) if change else recipe, sort_keys=False))
        return ["distill", "--recipe", str(path)]
    return Case(name, setup, expect)


def teacher_file_case(name: str, expect: str, make: Callable[[Path, Path], Path]):
    def change_to(scratch: Path, env: Path) -> list[str]:
        weights = make(scratch, env)
        path = scratch / "recipe.yaml"
        path.write_text(yaml.safe_dump(with_value(BASE, "teacher.weights", str(weights)), sort_keys=False))
        return ["distill", "--recipe", str(path)]
    return Case(name, change_to, expect)


def _garbage(scratch: Path, env: Path) -> Path:
    path = scratch / "garbage.pt"
    path.write_bytes(os.urandom(4096))
    return path


def _truncated_pt(scratch: Path, env: Path) -> Path:
    data = (env / "teacher.pt").read_bytes()
    path = scratch / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_safetensors(scratch: Path, env: Path) -> Path:
    from safetensors.torch import save_file

    full = scratch / "full.safetensors"
    save_file(torch.load(env / "teacher.pt", weights_only=True), str(full))
    data = full.read_bytes()
    full.unlink()
    path = scratch / "truncated.safetensors"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _wrong_architecture(scratch: Path, env: Path) -> Path:
    from tinyclip.runner import load_model

    path = scratch / "s50.pt"
    torch.save(load_model("TinyCLIP-smoke-S50", None).state_dict(), path)
    return path


def _without_eval_set(scratch: Path, env: Path) -> list[str]:
    data = scratch / "data-copy"
    shutil.copytree(env / "smoke", data)
    shutil.rmtree(data / "eval" / "tux")
    recipe = with_value(with_value(BASE, "teacher.weights", str(env / "teacher.pt")), "defaults.data",
                  {"root": str(data), "augment": False})
    recipe = with_value(recipe, "defaults.eval", {"tasks": ["fmnist", "tux"]})
    (scratch / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return ["distill", "--recipe", str(scratch / "recipe.yaml")]


def _runs_under_a_file(scratch: Path, env: Path) -> list[str]:
    (scratch / "a-file").write_text("not a folder\n")
    os.environ["TINYCLIP_RUNS_ROOT"] = str(scratch / "a-file" / "runs")   # restored by the fixture
    return recipe_case("", "").setup(scratch, env)


def _data_under_a_file(scratch: Path, env: Path) -> list[str]:
    (scratch / "a-file").write_text("not a folder\n")
    return ["data", "build", "--profile", "smoke", "--data-root", str(scratch / "a-file" / "data")]


def _non_finite(scratch: Path, env: Path) -> Path:
    state = torch.load(env / "teacher.pt")
    state["visual.proj"][0, 0] = float("nan")
    path = scratch / "nan.pt"
    torch.save(state, path)
    return path


def _bad_student_weights_for_inherit(scratch: Path, env: Path) -> list[str]:
    return ["inherit", "--teacher", "TinyCLIP-smoke-teacher", "--teacher-weights", str(_garbage(scratch, env)),
            "--student", "TinyCLIP-smoke-S50", "--out", str(scratch / "student")]


CASES = [
    # misspelt keys inside nested mappings
    recipe_case("logit_scale key", "unknown key vlaue", lambda r: with_value(r, "defaults.logit_scale",
                                                                       {"mode": "fixed", "vlaue": 50})),
    recipe_case("auto key", "unknown key mask_step", lambda r: with_value(with_value(r, "stages.0.kind", "auto"),
                                                                    "stages.0.auto",
                                                                    {"target_sparsity": 0.25, "mask_step": 1})),
    recipe_case("data key", "unknown key profle", lambda r: with_value(r, "defaults.data", {"profle": "smoke"})),
    recipe_case("eval key", "unknown key evry", lambda r: with_value(r, "defaults.eval", {"evry": 5})),
    recipe_case("inherit key", "unknown key depth_rul", lambda r: with_value(r, "stages.0.inherit", {"depth_rul": "even"})),
    recipe_case("top-level key", "unknown top-level keys", lambda r: with_value(r, "stagse", [])),
    # wrong types
    recipe_case("batch not a number", "batch: expected an integer", lambda r: with_value(r, "defaults.batch", "lots")),
    recipe_case("augment not a boolean", "data.augment: expected true or false",
                lambda r: with_value(r, "defaults.data.augment", "yes")),
    recipe_case("mask lr not a number", "auto.mask_lr: expected a number",
                lambda r: with_value(with_value(r, "stages.0.kind", "auto"), "stages.0.auto",
                               {"target_sparsity": 0.25, "mask_steps": 1, "mask_lr": "fast"})),
    recipe_case("seed not an integer", "seed: expected an integer", lambda r: with_value(r, "seed", "abc")),
    recipe_case("steps a fraction", "steps: expected an integer", lambda r: with_value(r, "stages.0.steps", 2.5)),
    # out of range
    recipe_case("negative lr", "lr must be positive", lambda r: with_value(r, "defaults.lr", -1.0)),
    recipe_case("sparsity above 1", "auto.target_sparsity must lie in [0, 1)",
                lambda r: with_value(with_value(r, "stages.0.kind", "auto"), "stages.0.auto", {"target_sparsity": 1.5})),
    recipe_case("negative warmup", "warmup must be ≥ 0", lambda r: with_value(r, "defaults.warmup", -3)),
    recipe_case("zero eval items", "eval.max_items must be ≥ 1", lambda r: with_value(r, "defaults.eval.max_items", 0)),
    recipe_case("negative mix weight", "data.weights.tux must be ≥ 0",
                lambda r: with_value(r, "defaults.data.weights", {"tux": -1.0, "noto": 1.0})),
    recipe_case("unknown precision", "precision must be one of", lambda r: with_value(r, "defaults.precision", "fp8")),
    recipe_case("unknown depth rule", "inherit.depth_rule: expected one of even, interval_front",
                lambda r: with_value(r, "stages.0.inherit", {"depth_rule": "evn"})),
    # malformed YAML, with its line
    recipe_case("malformed YAML", "line 4", text="name: broken\nseed: 0\nstages:\n  - {name: a, steps: [1, 2}\n"),
    # models
    recipe_case("student larger than its source", "cannot inherit TinyCLIP-smoke-S75 from its previous",
                lambda r: with_value(r, "stages", [{"name": "S50", "student": "TinyCLIP-smoke-S50", "steps": 2},
                                             {"name": "S75", "student": "TinyCLIP-smoke-S75", "init": "previous",
                                              "steps": 2}])),
    recipe_case("student larger than the teacher", "larger than its teacher",
                lambda r: with_value(r, "teacher", {"model": "TinyCLIP-smoke-S50", "weights": None})),
    recipe_case("unknown student", "unknown model 'TinyCLIP-smoke-S33'",
                lambda r: with_value(r, "stages.0.student", "TinyCLIP-smoke-S33")),
    recipe_case("unknown teacher", "unknown model 'ViT-Q-99'",
                lambda r: with_value(r, "teacher", {"model": "ViT-Q-99", "weights": None})),
    recipe_case("missing teacher file", "does not exist", lambda r: with_value(r, "teacher.weights", "/nonexistent/t.pt")),
    # checkpoints
    teacher_file_case("corrupt checkpoint", "does not load into TinyCLIP-smoke-teacher", _garbage),
    teacher_file_case("truncated checkpoint", "does not load into TinyCLIP-smoke-teacher", _truncated_pt),
    teacher_file_case("truncated safetensors", "does not load into TinyCLIP-smoke-teacher", _truncated_safetensors),
    teacher_file_case("wrong-architecture teacher", "does not load into TinyCLIP-smoke-teacher", _wrong_architecture),
    teacher_file_case("non-finite teacher weights", "holds non-finite values (first in visual.proj)", _non_finite),
    Case("inherit from a corrupt checkpoint", _bad_student_weights_for_inherit, "cannot load teacher weights"),
    # data and folders
    Case("missing evaluation set", _without_eval_set, "evaluation set tux is missing"),
    recipe_case("unknown evaluation set", "unknown evaluation set(s) imagenet_x",
                lambda r: with_value(r, "defaults.eval.tasks", ["imagenet_x"])),
    Case("runs folder not writable", _runs_under_a_file, "cannot write"),
    Case("data folder not writable", _data_under_a_file, "cannot write"),
    Case("evaluation of an unknown model", lambda s, e: ["eval", "--model", "ViT-Q-99", "--profile", "smoke",
                                                         "--data-root", str(e)], "unknown model"),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file():
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[str(path)] = "dir"
    return out


TABLE = Path(__file__).resolve().parents[1] / "build" / "hostile_inputs.md"
_seen: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    """After the module: the table of cases checked here, case → its error line (build/hostile_inputs.md)."""
    yield
    if _seen:
        TABLE.parent.mkdir(exist_ok=True)
        cells = {name: line.replace("|", "\\|") for name, line in _seen.items()}
        rows = "".join(f"| {name} | `{line}` |\n" for name, line in cells.items())
        TABLE.write_text("| case | first line of the message (exit 2) |\n|---|---|\n" + rows)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_line_exit_2_nothing_written(case, env, tmp_path, monkeypatch, capsys):
    scratch, runs = tmp_path / "inputs", tmp_path / "runs"
    scratch.mkdir()
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(runs))
    argv = case.setup(scratch, env)
    capsys.readouterr()
    before = _snapshot(tmp_path, env)
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert case.expect in lines[0], lines[0]
    assert _snapshot(tmp_path, env) == before
    _seen[case.name] = lines[0]


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25


def _damage_first_shard(train: Path) -> tuple[int, int]:
    """In the first training shard: sample 0's image garbled, sample 1's caption emptied, and the header of the
    member 12 from the end broken (what follows cannot be located). Returns (samples written, samples readable)."""
    import io
    import json
    import tarfile

    shard = sorted(train.glob("shard-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    keys = list(dict.fromkeys(m.name.split(".")[0] for m, _ in members))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            key, ext = info.name.split(".", 1)
            if key == keys[0] and ext == "jpg":
                data = b"\xff\xd8 not really a jpeg"
            if key == keys[1] and ext in ("txt", "json"):
                data = b" " if ext == "txt" else json.dumps({**json.loads(data), "captions": [" "]}).encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(shard.read_bytes())
    offsets, pos = [], 0
    while pos + 512 <= len(raw) and raw[pos:pos + 512] != bytes(512):
        offsets.append(pos)
        pos += 512 + (int(raw[pos + 124:pos + 136].split(b"\0")[0] or b"0", 8) + 511) // 512 * 512
    raw[offsets[-12] + 10] ^= 0x55   # a damaged name byte: the header checksum no longer matches
    shard.write_bytes(bytes(raw))
    lost = len({m.name.split(".")[0] for m, _ in members[len(offsets) - 12:]})
    return len(keys), len(keys) - lost


def test_damaged_samples_are_skipped_counted_and_training_continues(env, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data" / "smoke"
    shutil.copytree(env / "smoke", data)
    written, readable = _damage_first_shard(data / "train")
    recipe = with_value(with_value(BASE, "teacher.weights", str(env / "teacher.pt")), "defaults.data",
                        {"root": str(data), "augment": False})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    assert cli.main(["distill", "--recipe", str(path)]) == 0
    (summary,) = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["data_skipped"] == {"damaged tar data": written - readable, "undecodable image": 1,
                                       "empty caption": 1}
    assert written - readable >= 3


def test_a_loss_that_turns_non_finite_stops_the_run_in_one_line(env, tmp_path, monkeypatch, capsys):
    """Only training finds a diverging loss: one line naming the stage and step, exit 2, no traceback; the run is
    left unfinished (no FINISHED marker, no exported student) so nothing downstream can reuse it."""
    recipe = with_value(with_value(BASE, "teacher.weights", str(env / "teacher.pt")), "defaults.lr", 1.0e12)
    recipe = with_value(recipe, "defaults.grad_clip", 0.0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("TINYCLIP_PROGRESS", "0")
    capsys.readouterr()
    assert cli.main(["distill", "--recipe", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the loss is not finite at step" in lines[0], lines
    assert not list((tmp_path / "runs").rglob("FINISHED")) and not list((tmp_path / "runs").rglob("model"))
