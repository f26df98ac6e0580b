"""The trainer's input pipeline and multi-process bookkeeping (issue 11): batches built ahead in worker processes
equal the in-process definition bit for bit, fp16 overflow skips weights and masks together, and a 2-process
(gloo) run resumed inside the mask phase ends exactly like an uninterrupted one (every rank's RNG stream is in
the checkpoint)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tinyclip.pruned import WEIGHTS_FILE


class PlainTokenizer:
    """open_clip's tokenizer behind a wrapper: PairSource then tokenizes each batch as it did before the token
    cache (one call on the batch's captions), the definition the prefetched batches are compared with."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts):
        return self.tokenizer(texts)


@pytest.mark.parametrize("fixed_views", [0, 2])
def test_prefetched_batches_equal_the_in_process_definition(env, fixed_views):
    import open_clip

    from tinyclip.data import PairSource, TrainDataSpec

    tokenizer = open_clip.get_tokenizer("TinyCLIP-smoke-S75")
    spec = TrainDataSpec(root=str(env / "smoke"), image_size=32, augment=True, fixed_views=fixed_views)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    reference = PairSource(spec, PlainTokenizer(tokenizer), mean, std)
    source = PairSource(spec, tokenizer, mean, std)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the reference in this process with 2 threads, the workers with 1
    try:
        for rank, world_size in ((0, 1), (1, 2)):
            steps = range(3, 8)
            prefetched = list(source.batches(steps, 16, seed=5, rank=rank, world_size=world_size, workers=2))
            assert len(prefetched) == len(steps)
            for step, (images, tokens, ids) in zip(steps, prefetched):
                ref_images, ref_tokens, ref_ids = reference.batch(step, 16, 5, rank, world_size)
                assert torch.equal(images, ref_images) and torch.equal(tokens, ref_tokens) and ids == ref_ids
    finally:
        torch.set_num_threads(threads)
    # the trainer's RNG stream is not touched by starting the workers (the auto stage samples gates from it)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(source.batches(range(1), 16, seed=5, workers=1)))
    assert torch.equal(torch.rand(3), expected)


def test_fp16_overflow_in_the_masks_skips_the_weights_too():
    """A GradScaler skips each optimizer on its own gradients; skip_together makes an overflow in log-α skip the
    weight step as well (and the other way round), and the scale backs off once."""
    from tinyclip.train import skip_together

    weight, mask = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizers = [torch.optim.AdamW([weight], lr=0.1), torch.optim.AdamW([mask], lr=0.1)]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(weight.sum() + mask.sum()).backward()
    mask.grad[0] = float("inf")  # an overflow in the mask gradients only
    scaler.unscale_(optimizers[0])
    skip_together(scaler, optimizers)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    assert torch.equal(weight, torch.ones(3)) and torch.equal(mask.detach()[1:], torch.ones(1))
    assert scaler.get_scale() == 512.0
    # a clean step afterwards moves both
    for opt in optimizers:
        opt.zero_grad()
    scaler.scale(weight.sum() + mask.sum()).backward()
    skip_together(scaler, optimizers)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    assert not torch.equal(weight, torch.ones(3)) and not torch.equal(mask.detach()[1:], torch.ones(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(recipe: Path, runs: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TINYCLIP_RUNS_ROOT": str(runs), "OMP_NUM_THREADS": "1", "TINYCLIP_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tinyclip", "distill", "--recipe", str(recipe), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [*_descendants(int(child)), int(child)]
    return found


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])[0]


@pytest.mark.slow
def test_two_process_resume_inside_the_mask_phase_is_exact(env, tmp_path):
    """2 gloo ranks, each sampling its own gates (seed + rank); killed with SIGKILL after a checkpoint inside the
    mask phase and resumed: the final pruned student equals the uninterrupted 2-process run's bit for bit."""
    raw = {"name": "ddp-auto", "seed": 0, "device": "cpu",
           "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")},
           "defaults": {"kind": "auto", "student": "TinyCLIP-smoke-teacher", "init": "teacher",
                        "data": {"profile": "smoke", "augment": True}, "batch": 16, "lr": 1e-3,
                        "checkpoint_every": 2, "log_every": 1, "eval": {"tasks": []}},
           # long enough that the kill lands inside the mask phase on a busy machine (a step takes ~0.05 s)
           "stages": [{"name": "A75", "steps": 150, "warmup": 5,
                       "auto": {"target_sparsity": 0.25, "mask_steps": 140, "mask_lr": 0.3, "lagrangian_lr": 0.3,
                                "sparsity_warmup": 10}}]}
    recipe = tmp_path / "ddp_auto.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    straight = _finish(_torchrun(recipe, tmp_path / "straight"))

    proc = _torchrun(recipe, tmp_path / "resumed")
    deadline = time.time() + 240
    while not any((tmp_path / "resumed").glob("*/checkpoints/last.pt")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    for pid in [*_descendants(proc.pid), proc.pid]:  # torchrun starts its workers in sessions of their own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()
    checkpoint = torch.load(next((tmp_path / "resumed").glob("*/checkpoints/last.pt")), weights_only=False)
    assert checkpoint["step"] < 140 and "mask_optimizer" in checkpoint  # inside the mask phase
    ranks = checkpoint["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # one stream per rank
    resumed = _finish(_torchrun(recipe, tmp_path / "resumed", "--resume"))

    a = load_file(Path(straight["model_dir"]) / WEIGHTS_FILE)
    b = load_file(Path(resumed["model_dir"]) / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["auto"] == straight["auto"] and resumed["train"] == straight["train"]
