"""Every run the notebooks read, once: what ``make reproduce-all`` trains from nothing and how long that takes.

Studies share runs (the teacher, the manual chain, the automatic chain), so a notebook's own training minutes
(``reports/<profile>/compute.json``) double-count them. Here each run is counted once, by its run folder: the
finished ones with their measured ``train_s``, the unfinished ones with a projection from their step count and
the measured seconds per step of finished runs of the same kind, student and batch (the nearest match that has
finished). The projected wall time from nothing is the data build, the LiT teacher's features and heads (both
measured in their folders) and the summed training divided by the parallel jobs; the notebooks' own execution is
not included. The index shows it as a projection beside the measured parts, and says how many runs could not be
projected (nothing like them has finished) or named (their teacher is not built yet).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import TinyCLIPError
from ..recipe import load_recipe
from ..runs import runs_root
from .common import Arm, materialize, recipe_runs

SEEDS = (0, 1, 2)


def study_arms(profile: str) -> dict[str, list[Arm]]:
    """notebook → the arms it trains (seeded students; their recipes train the teacher they distil from)."""
    from . import affinity, inheritance, multistage, redundancy, table2, teacher_choice, training_cost

    makers: dict[str, Callable[[], list[Arm]]] = {
        "table2": lambda: table2.student_arms(profile),
        "ablation_affinity": lambda: affinity.arms(profile),
        "ablation_inheritance": lambda: inheritance.arms(profile),
        "redundancy": lambda: [redundancy.auto_arm(profile)],
        "teacher_choice": lambda: teacher_choice.arms(profile),
        "multistage": lambda: multistage.arms(profile),
        "training_cost": lambda: training_cost.arms(profile),
    }
    return {name: make() for name, make in makers.items()}


def _stage_runs(path: Path, seed: int) -> list[dict[str, Any]]:
    """The runs of a recipe on one seed (its teacher's first, if it trains one), finished or not."""
    out = []
    for _, _, config, run in recipe_runs(load_recipe(path, seed=seed)):
        entry = {"dir": str(run.dir), "kind": config["kind"], "student": config["student"]["name"],
                 "batch": config["batch"], "steps": int(config["steps"]), "curve": bool(config["eval"].get("every"))}
        if run.is_finished():
            entry["train_s"] = float(run.summary().get("train_s") or 0.0)
        out.append(entry)
    return out


def _seconds_per_step(done: Sequence[dict[str, Any]], run: dict[str, Any]) -> float | None:
    """Measured seconds per step of the finished runs most like ``run`` (same kind, student and batch; else same
    kind and batch; else all)."""
    keys = (("kind", "student", "batch", "curve"), ("kind", "student", "batch"), ("kind", "batch"), ())
    for key in keys:
        rates = [d["train_s"] / d["steps"] for d in done
                 if d["steps"] and d["train_s"] and all(d[k] == run[k] for k in key)]
        if rates:
            return statistics.median(rates)
    return None


def _measured_setup_s(profile: str) -> dict[str, float]:
    """Seconds the data build and the LiT teacher took, from their own records (absent ones are left out)."""
    from ..data.profiles import profile_dir

    out: dict[str, float] = {}
    build = profile_dir(profile) / "build.json"
    if build.is_file():
        out["data build"] = float(json.loads(build.read_text()).get("build_seconds") or 0.0)
    lit = 0.0
    for summary in sorted((runs_root() / "lit").glob(f"{profile}-*/summary.json")):
        record = json.loads(summary.read_text())
        seconds = sum((record.get("feature_seconds") or {}).values()) + (record.get("heads") or {}).get("seconds", 0.0)
        lit = max(lit, seconds)
    if lit:
        out["LiT teacher"] = lit
    return out


def inventory(profile: str = "mini", seeds: Sequence[int] = SEEDS, parallel: int = 2) -> dict[str, Any]:
    """Unique runs behind every notebook: counts, measured and projected training minutes, and the projected
    ``make reproduce-all`` wall time from nothing with ``parallel`` jobs side by side."""
    runs: dict[str, dict[str, Any]] = {}
    per_notebook: dict[str, set[str]] = {}
    unresolved: list[str] = []
    resolved: dict[tuple[str, int], list[dict[str, Any]]] = {}  # notebooks share recipes: resolve each once
    for notebook, arms in study_arms(profile).items():
        dirs = per_notebook.setdefault(notebook, set())
        for arm in arms:
            path = materialize(arm)
            for seed in seeds:
                try:
                    if (str(path), seed) not in resolved:
                        resolved[str(path), seed] = _stage_runs(path, seed)
                except TinyCLIPError as err:  # e.g. the LiT teacher is not built: its students have no run names yet
                    unresolved.append(f"{notebook}/{arm.key} seed {seed}: {err}")
                    continue
                for run in resolved[str(path), seed]:
                    runs.setdefault(run["dir"], run)
                    dirs.add(run["dir"])
    done = [r for r in runs.values() if "train_s" in r]
    todo = [r for r in runs.values() if "train_s" not in r]
    projected, unprojected = 0.0, 0
    for run in todo:
        rate = _seconds_per_step(done, run)
        if rate is None:
            unprojected += 1
        else:
            projected += rate * run["steps"]
    measured = sum(r["train_s"] for r in done)
    setup = _measured_setup_s(profile)
    wall_s = sum(setup.values()) + (measured + projected) / max(1, parallel)
    return {"profile": profile, "seeds": list(seeds), "parallel": parallel,
            "runs": len(runs), "finished": len(done), "unfinished": len(todo), "unprojected": unprojected,
            "unresolved": unresolved,
            "train_min_measured": round(measured / 60, 1), "train_min_projected": round(projected / 60, 1),
            "setup_min": {k: round(v / 60, 1) for k, v in setup.items()},
            "reproduce_all_h": round(wall_s / 3600, 2),
            "notebook_runs": {k: len(v) for k, v in per_notebook.items()},
            "notebook_finished": {k: sum("train_s" in runs[d] for d in v) for k, v in per_notebook.items()}}


def _cmd_inventory(args) -> int:
    """``tinyclip inventory``: write ``reports/<profile>/inventory.json``, refresh the index, print the JSON."""
    from ..runs import atomic_write_json
    from ..site import inventory_path, write_index

    record = inventory(args.profile, parallel=args.parallel)
    atomic_write_json(inventory_path(args.profile), record)
    write_index(args.profile)
    print(json.dumps(record))
    return 0
