"""CUDA tests (``make test-gpu``; skipped without a GPU): the trainer's bf16 and fp16 steps, compiled steps
(``compile: true``), a mask-phase step, exact resume on CUDA, and a 1-process NCCL torchrun run. Tiny smoke
models and data, a few steps each."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tinyclip.recipe import load_recipe
from tinyclip.runner import run_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def write_recipe(folder: Path, env: Path, precision: str, name: str = "gpu", **stage) -> Path:
    raw = {"name": name, "seed": 0, "device": "cuda",
           "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")},
           "defaults": {"data": {"profile": "smoke", "augment": True}, "batch": 16, "lr": 1e-3, "warmup": 2,
                        "precision": precision, "checkpoint_every": 3, "log_every": 1,
                        "eval": {"tasks": ["tux"], "max_items": 32}},
           "stages": [{"name": "S75", "student": "TinyCLIP-smoke-S75", "steps": 6, **stage}]}
    path = folder / f"{name}-{precision}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("precision", ["bf16", "amp"])
def test_training_steps_on_cuda(env, runs, tmp_path, precision):
    summary = run_recipe(load_recipe(write_recipe(tmp_path, env, precision)))[0]
    assert math.isfinite(summary["train"]["loss"]) and summary["metrics"]
    prov = json.loads((Path(summary["run_dir"]) / "provenance.json").read_text())
    assert prov["device"].startswith("cuda")


def test_compiled_steps_on_cuda(env, runs, tmp_path, monkeypatch):
    """``compile: true``: the student + loss run under torch.compile, checkpoint and resume keep the eager
    module's keys, and the loss matches the eager run's at the same seed (bf16: to a few digits)."""
    from tinyclip import train

    decisions = []
    real = train.compiles

    def spy(stage, student, device):
        decisions.append(real(stage, student, device))
        return decisions[-1]

    monkeypatch.setattr(train, "compiles", spy)
    eager = run_recipe(load_recipe(write_recipe(tmp_path, env, "bf16", name="eager")))[0]

    class Interrupt(Exception):
        pass

    def crash(step, record):
        if step == 4:
            raise Interrupt

    path = write_recipe(tmp_path, env, "bf16", name="compiled", compile=True)
    with pytest.raises(Interrupt):  # a checkpoint at step 3, then stopped
        run_recipe(load_recipe(path), on_step=crash)
    compiled = run_recipe(load_recipe(path), resume=True)[0]
    assert decisions == [False, True, True] and compiled["run"] != eager["run"]
    assert math.isfinite(compiled["train"]["loss"])
    assert compiled["train"]["loss"] == pytest.approx(eager["train"]["loss"], rel=0.05)
    weights = load_file(Path(compiled["model_dir"]) / "open_clip_model.safetensors")
    assert not any("_orig_mod" in k for k in weights)


def test_mask_phase_step_on_cuda(env, runs, tmp_path):
    path = write_recipe(tmp_path, env, "amp", name="auto", kind="auto", student="TinyCLIP-smoke-teacher",
                        init="teacher", auto={"target_sparsity": 0.25, "mask_steps": 4, "mask_lr": 0.3,
                                              "lagrangian_lr": 0.3, "sparsity_warmup": 2})
    summary = run_recipe(load_recipe(path))[0]
    assert summary["auto"]["achieved_sparsity"] > 0 and math.isfinite(summary["train"]["loss"])


def test_resume_on_cuda_is_exact(env, runs, tmp_path, monkeypatch):
    path = write_recipe(tmp_path, env, "bf16", name="resume")
    full = run_recipe(load_recipe(path))[0]

    class Interrupt(Exception):
        pass

    def crash(step, record):
        if step == 4:
            raise Interrupt

    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "second"))
    with pytest.raises(Interrupt):
        run_recipe(load_recipe(path), on_step=crash)
    resumed = run_recipe(load_recipe(path), resume=True)[0]
    a = load_file(Path(full["model_dir"]) / "open_clip_model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "open_clip_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["train"] == full["train"]


def test_one_process_nccl_torchrun(env, runs, tmp_path):
    path = write_recipe(tmp_path, env, "bf16", name="nccl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "tinyclip", "distill", "--recipe", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TINYCLIP_RUNS_ROOT": str(tmp_path / "ddp")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    assert math.isfinite(summary["train"]["loss"])
