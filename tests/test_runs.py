"""Tests for tinyclip.runs: hashing, atomic writes, run folders, metrics truncation, locks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tinyclip.errors import TinyCLIPError
from tinyclip.runs import Run, atomic_torch_save, canonical_json, config_hash, runs_root


def test_hash_is_canonical_and_stable():
    a = {"b": 1, "a": {"y": [1, 2.5], "x": None}}
    b = {"a": {"x": None, "y": [1, 2.5]}, "b": 1}
    assert canonical_json(a) == '{"a":{"x":null,"y":[1,2.5]},"b":1}'
    assert config_hash(a) == config_hash(b)
    # sha256 of the canonical text above, first 12 hex digits: a literal, so a change of the scheme is noticed
    assert config_hash(a) == "e972cc5395b3"
    assert config_hash({**a, "b": 2}) != config_hash(a)


def test_runs_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path))
    assert runs_root() == tmp_path
    assert Run({"x": 1}).dir == tmp_path / config_hash({"x": 1})


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom")


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_torch_save({"v": torch.tensor([1.0])}, path)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"v": Unpicklable()}, path)
    assert torch.load(path)["v"].tolist() == [1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind


def test_run_lifecycle_and_metrics_truncation(tmp_path):
    run = Run({"x": 1}, root=tmp_path, labels={"stage": "s"})
    assert not run.is_finished()
    run.start(seed=3, device="cpu", command=["tinyclip", "distill"])
    saved = json.loads((run.dir / "config.json").read_text())
    assert saved == {"hash": run.hash, "labels": {"stage": "s"}, "config": {"x": 1}}
    prov = run.read_json("provenance.json")
    assert prov["seed"] == 3 and prov["device"] == "cpu" and prov["command"] == ["tinyclip", "distill"]
    assert "torch" in prov["packages"]
    for step in range(5):
        run.append_metrics({"step": step, "loss": float(step)})
    with open(run.metrics_path, "a") as handle:  # a line torn by a crash
        handle.write('{"step": 5, "lo')
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3, 4]
    run.truncate_metrics(3)
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    with pytest.raises(TinyCLIPError, match="not finished"):
        run.summary()
    run.finish({"metrics": {"a": 1.0}})
    assert run.is_finished()
    assert run.summary() == {"metrics": {"a": 1.0}, "run_dir": str(run.dir), "model_dir": str(run.dir / "model")}
    assert run.read_json("provenance.json")["wall_s"] >= 0
    # a second attempt (resume) keeps the first attempt's start time
    run.start(seed=3, device="cpu")
    assert len(run.read_json("provenance.json")["attempts"]) == 1
    run.reset()
    assert [p.name for p in run.dir.iterdir()] == []


def test_checkpoint_round_trip_and_unreadable(tmp_path):
    run = Run({"x": 2}, root=tmp_path)
    with pytest.raises(TinyCLIPError, match="no checkpoint"):
        run.load_checkpoint()
    run.save_checkpoint({"step": 7, "w": torch.arange(3)})
    assert run.load_checkpoint()["step"] == 7
    run.checkpoint_path.write_bytes(b"garbage")
    with pytest.raises(TinyCLIPError, match="unreadable"):
        run.load_checkpoint()


def test_lock_is_exclusive_across_processes(tmp_path):
    run = Run({"x": 3}, root=tmp_path)
    probe = ("import fcntl,sys; f=open(sys.argv[1],'w')\n"
             "try:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError: print('held')")
    with run.lock():
        out = subprocess.run([sys.executable, "-c", probe, str(run.dir / ".lock")], capture_output=True, text=True)
        assert out.stdout.strip() == "held"
    out = subprocess.run([sys.executable, "-c", probe, str(run.dir / ".lock")], capture_output=True, text=True)
    assert out.stdout.strip() == "free"
