"""Evaluation during training (recipe ``eval.every``): a run's learning curve, with per-item outcomes.

With ``eval.every: N`` the trainer evaluates the student before its first step and after every N steps, besides
the final evaluation. Each point is kept as ``curve/<steps done>.json`` in the run folder: steps done, samples
seen, the metrics and one outcome per evaluation item (what ``eval_items.json`` holds for the end), so a study
can resample evaluation items at every point (claim C7, ``notebooks/training_cost.ipynb``). The metrics also go
to ``metrics.jsonl`` as before (the point before the first step has ``"step": -1``).

An evaluation must not change training: it runs without gradients, :func:`tinyclip.eval.evaluate_model` puts the
train mode back, and :func:`kept_rng` here puts back every random number generator it may have drawn from (a
data loader draws its base seed from torch's), so a run with a schedule ends with the weights of a run without
one. ``eval`` is part of the run identity, so a run without a schedule is never taken for one with a curve.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import TinyCLIPError
from .runs import Run, atomic_write_json

CURVE_DIR = "curve"


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Run the body and restore the Python, numpy, torch (and CUDA) generators to their state before it."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def record_point(run: Run, model: torch.nn.Module, evaluate: Callable[..., dict], *, done: int, batch: int,
                 world: Any) -> None:
    """Evaluate ``model`` after ``done`` steps of ``batch`` pairs (rank 0; the other ranks wait) and keep the
    point: ``curve/<done>.json`` with per-item outcomes, and a ``metrics.jsonl`` line."""
    if world.is_main:
        items: dict[str, Any] = {}
        started = time.time()
        with kept_rng():
            metrics = evaluate(model, items)
        point = {"step": done, "samples": done * batch, "metrics": metrics, "items": items,
                 "eval_s": round(time.time() - started, 2)}
        atomic_write_json(run.dir / CURVE_DIR / f"{done:07d}.json", point)
        run.append_metrics({"step": done - 1, "samples": done * batch, "eval": metrics})
    world.barrier()


def read_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """A finished run's curve, by samples seen: every ``curve/`` point and the final evaluation (``eval.json``,
    ``eval_items.json``), each ``{"step", "samples", "metrics", "items"}`` (``eval_s`` where measured)."""
    run_dir = Path(run_dir)
    finished = run_dir / "FINISHED"
    if not finished.is_file():
        raise TinyCLIPError(f"run {run_dir} has not finished; train it before reading its curve")
    summary = json.loads(finished.read_text())
    points = [json.loads(p.read_text()) for p in sorted((run_dir / CURVE_DIR).glob("*.json"))]
    final_items = run_dir / "eval_items.json"
    if not final_items.is_file():
        raise TinyCLIPError(f"run {run_dir} has no eval_items.json; it finished before per-item outcomes were kept")
    points = [p for p in points if p["step"] < summary["steps"]]
    points.append({"step": summary["steps"], "samples": summary["samples"], "metrics": summary["metrics"],
                   "items": json.loads(final_items.read_text())})
    return sorted(points, key=lambda p: p["step"])
