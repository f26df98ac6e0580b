"""`make check-faults`: kill anywhere, lose nothing (smoke profile, scratch roots).
``scripts/check_faults.py [WORDS ...]`` runs only the trials whose name contains one of the words.

Each trial starts a command, SIGKILLs it at one point, looks for partial files, runs the same command again
(``--resume`` for training) and compares the result with an uninterrupted run of the same command:

* training (a 2-stage manual chain with augmentation and a teacher-embedding cache, and a 2-stage automatic
  chain): every final metric and every weight of every stage's student, and the runs' metrics logs;
* the data build: the content digest of the built data set;
* a report render: the rerun completes the page and the index.

Kill points: from outside by SIGKILL once a stage's metrics log passes a step (inside a manual stage, inside a
mask phase), or from inside at a named point (:mod:`tinyclip.faults`: a checkpoint in its temporary file, the
checkpoint written right after the prune, a teacher-cache row whose flag is not yet set, the FINISHED marker just
written with the next stage not started, a data shard, the report's HTML).

"Partial files" are files at their final names that do not read back (JSON, JSON lines, safetensors, torch
checkpoints, tar shards, HTML), counted right after each kill and after the rerun, plus temporary files and
folders left behind after the rerun. The last line is JSON: ``trials``, ``identical``, ``max_abs_diff``,
``partial_files`` and one row per trial.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TINYCLIP_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
STEPS, MASK_STEPS, CHECKPOINT_EVERY = 24, 12, 6   # the checkpoint at step 12 is the one written right after the prune


def recipes(scratch: Path, teacher: Path) -> dict[str, Path]:
    import yaml

    common = {"loss": "affinity", "logit_scale": {"mode": "fixed", "value": 50.0}, "batch": 32, "lr": 1.0e-3,
              "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "eval": {"max_items": 64}}
    manual = {"name": "faults-manual", "seed": 0, "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(teacher)},
              "defaults": {**common, "warmup": 4, "data": {"profile": "smoke", "augment": True, "fixed_views": 2},
                           "teacher_cache": True},
              "stages": [{"name": "S75", "student": "TinyCLIP-smoke-S75", "init": "teacher"},
                         {"name": "S50", "student": "TinyCLIP-smoke-S50", "init": "previous"}]}
    auto = {"name": "faults-auto", "seed": 0, "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(teacher)},
            "defaults": {**common, "kind": "auto", "student": "TinyCLIP-smoke-teacher", "warmup": MASK_STEPS,
                         "data": {"profile": "smoke", "augment": False}},
            "stages": [{"name": "A75", "init": "teacher",
                        "auto": {"start_sparsity": 0.0, "target_sparsity": 0.25, "mask_steps": MASK_STEPS,
                                 "sparsity_warmup": 4, "mask_lr": 0.3, "lagrangian_lr": 0.3}},
                       {"name": "A50", "init": "previous",
                        "auto": {"start_sparsity": 0.25, "target_sparsity": 0.5, "mask_steps": MASK_STEPS,
                                 "sparsity_warmup": 4, "mask_lr": 0.3, "lagrangian_lr": 0.3}}]}
    out = {}
    for name, recipe in (("manual", manual), ("auto", auto)):
        out[name] = scratch / f"faults_{name}.yaml"
        out[name].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return out


# (name, command kind, kill): kill is ("env", TINYCLIP_KILL_AT) or ("after-step", stage index, step)
TRIALS = [
    ("inside a manual stage", "manual", ("after-step", 0, 9)),
    ("while a checkpoint is written", "manual", ("env", "write@checkpoints/last.pt#1")),
    ("while the teacher cache is written", "manual", ("env", "teacher-cache#3")),
    ("between two stages of a chain", "manual", ("env", "written@FINISHED#1")),
    ("while the final evaluation is written", "manual", ("env", "write@eval.json#2")),
    ("inside the mask phase", "auto", ("after-step", 0, 5)),
    ("right after the prune (its checkpoint written)", "auto", ("env", f"written@checkpoints/last.pt#{MASK_STEPS // CHECKPOINT_EVERY}")),
    ("between two automatic stages", "auto", ("env", "written@FINISHED#1")),
    ("inside the second stage's mask phase", "auto", ("after-step", 1, 7)),
    ("after the prune, before the next checkpoint", "auto", ("after-step", 0, MASK_STEPS + 2)),
    ("during the data build", "data", ("env", "data-shard#1")),
    ("during a report render", "report", ("env", "write@table2.html#1")),
]


def command(kind: str, recipe_paths: dict[str, Path], resume: bool) -> list[str]:
    if kind in ("manual", "auto"):
        return [sys.executable, "-m", "tinyclip", "distill", "--recipe", str(recipe_paths[kind]),
                *(["--resume"] if resume else [])]
    if kind == "data":
        return [sys.executable, "-m", "tinyclip", "data", "build", "--profile", "smoke"]
    return [sys.executable, "-m", "tinyclip", "report", "table2", "--profile", "smoke", "-p", "seeds", "[0]",
            "-p", "measure_throughput", "false"]


def train_table2_students(env: dict[str, str]) -> None:
    """What the Table 2 report reads: the smoke teacher and Table 2 students, seed 0 (trained, not killed)."""
    code = "from tinyclip.studies import table2; table2.train_students('smoke', [0], parallel=1, threads=1)"
    subprocess.run([sys.executable, "-c", code], env={**ENV, **env}, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def roots_env(trial_dir: Path) -> dict[str, str]:
    return {"TINYCLIP_RUNS_ROOT": str(trial_dir / "runs"), "TINYCLIP_DATA_ROOT": str(trial_dir / "data"),
            "TINYCLIP_REPORTS_ROOT": str(trial_dir / "reports")}


def run(cmd: list[str], env: dict[str, str], kill: tuple | None = None, runs_root: Path | None = None,
        recipe_path: Path | None = None) -> tuple[int, str]:
    extra = {"TINYCLIP_KILL_AT": kill[1]} if kill and kill[0] == "env" else {}
    proc = subprocess.Popen(cmd, env={**ENV, **env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    if kill and kill[0] == "after-step":
        _, stage, step = kill
        log = _metrics_path(recipe_path, stage, runs_root)
        while proc.poll() is None:
            if log.is_file() and any(r.get("step", -1) >= step for r in _records(log)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    out, err = proc.communicate()
    return proc.returncode, out if proc.returncode == 0 else err


def _metrics_path(recipe_path: Path, stage: int, runs_root: Path) -> Path:
    from tinyclip.recipe import load_recipe, resolve_recipe
    from tinyclip.runs import config_hash

    os.environ["TINYCLIP_DATA_ROOT"] = str(runs_root.parent / "data")   # the data identity reads build.json
    return runs_root / config_hash(resolve_recipe(load_recipe(recipe_path), device="cpu")[stage]) / "metrics.jsonl"


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def partial_files(*roots: Path) -> list[str]:
    """Files at final names that do not read back whole."""
    bad = []
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if not path.is_file() or _is_temporary(path):
                continue
            try:
                _read_back(path)
            except Exception as exc:  # noqa: BLE001 — any failure to read back is a partial file
                bad.append(f"{path.relative_to(root.parent)} ({type(exc).__name__})")
    return bad


def _is_temporary(path: Path) -> bool:
    return any(part.endswith((".tmp", ".partial")) or ".tmp" in part for part in path.parts[-3:])


def _read_back(path: Path) -> None:
    if path.suffix == ".json" or path.name == "FINISHED":
        json.loads(path.read_text())
    elif path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            json.loads(line)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        load_file(str(path))
    elif path.suffix == ".pt":
        import torch

        torch.load(path, map_location="cpu", weights_only=False)
    elif path.suffix == ".tar":
        with tarfile.open(path) as tar:
            for member in tar:
                tar.extractfile(member).read() if member.isfile() else None
    elif path.suffix == ".html":
        if "</html>" not in path.read_text()[-200:] and "</table>" not in path.read_text()[-200:]:
            raise ValueError("truncated HTML")
    elif path.suffix == ".npy":
        import numpy as np

        np.load(path, mmap_mode="r")


def leftovers(*roots: Path) -> list[str]:
    """Temporary files and folders left behind once the rerun has finished."""
    return [str(p.relative_to(root.parent)) for root in roots if root.exists() for p in sorted(root.rglob("*"))
            if _is_temporary(p) and (p.is_file() or p.is_dir()) and not _is_temporary(p.parent)]


def results_of(runs_root: Path, summaries: list[dict]) -> dict[str, Any]:
    """Every number a finished chain produced: final metrics and training values, weights, metrics logs."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {"numbers": {}, "weights": {}, "logs": {}}
    for s in summaries:
        out["numbers"].update({f"{s['stage']}.{k}": v for k, v in _leaves({"metrics": s["metrics"],
                                                                            "train": s["train"]}).items()})
        model_dir = runs_root / s["run"] / "model"
        for file in sorted(model_dir.glob("*.safetensors")):
            out["weights"].update({f"{s['stage']}.{k}": t for k, t in load_file(str(file)).items()})
        logs = [{k: v for k, v in r.items() if k not in ("samples_per_s", "data_wait_s")}
                for r in _records(runs_root / s["run"] / "metrics.jsonl")]
        out["logs"][s["stage"]] = logs
    return out


def _leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix.rstrip("."): float(obj)}
    return {}


def compare(reference: dict[str, Any], resumed: dict[str, Any]) -> tuple[bool, float]:
    if reference["numbers"].keys() != resumed["numbers"].keys() or \
            reference["weights"].keys() != resumed["weights"].keys():
        return False, float("inf")
    diff = max([abs(reference["numbers"][k] - resumed["numbers"][k]) for k in reference["numbers"]] +
               [float((reference["weights"][k].float() - resumed["weights"][k].float()).abs().max())
                for k in reference["weights"]])
    logs_equal = _strip_eval_time(reference["logs"]) == _strip_eval_time(resumed["logs"])
    return diff == 0.0 and logs_equal, diff


def _strip_eval_time(logs: dict) -> dict:
    return json.loads(json.dumps(logs).replace("NaN", "null"))


def prepare_data(root: Path) -> None:
    env = {**ENV, "TINYCLIP_DATA_ROOT": str(root)}
    subprocess.run([sys.executable, "-m", "tinyclip", "data", "build", "--profile", "smoke"], env=env, check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    import torch

    import tinyclip  # noqa: F401
    from tinyclip.data.build import data_digest
    from tinyclip.runner import load_model

    t0 = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="tinyclip-check-faults-"))
    rows, max_diff, partial_total = [], 0.0, 0
    try:
        base_data = scratch / "base-data"
        prepare_data(base_data)
        torch.manual_seed(0)
        teacher = scratch / "teacher.pt"
        torch.save(load_model("TinyCLIP-smoke-teacher", None).state_dict(), teacher)
        paths = recipes(scratch, teacher)

        references: dict[str, Any] = {}
        for kind in ("manual", "auto"):
            if not any(t[1] == kind for t in TRIALS if not sys.argv[1:] or any(a in t[0] for a in sys.argv[1:])):
                continue
            ref_dir = scratch / f"reference-{kind}"
            shutil.copytree(base_data, ref_dir / "data")
            code, out = run(command(kind, paths, False), roots_env(ref_dir))
            if code != 0:
                sys.exit(f"check-faults: the uninterrupted {kind} run failed: {out.strip().splitlines()[-1:]}")
            references[kind] = results_of(ref_dir / "runs", json.loads(out.strip().splitlines()[-1]))
            print(f"reference {kind} chain finished ({time.time() - t0:.0f} s)", file=sys.stderr)
        references["data"] = data_digest(base_data / "smoke")

        chosen = [t for t in TRIALS if not sys.argv[1:] or any(a in t[0] for a in sys.argv[1:])]
        for name, kind, kill in chosen:
            trial = scratch / f"trial-{len(rows):02d}"
            if kind in ("manual", "auto", "report"):
                shutil.copytree(base_data, trial / "data")
            env = roots_env(trial)
            roots = [trial / "runs", trial / "data", trial / "reports"]
            if kind == "report":
                train_table2_students(env)
            code, _ = run(command(kind, paths, False), env, kill, trial / "runs", paths.get(kind))
            killed = code == -signal.SIGKILL
            after_kill = partial_files(*roots)
            code2, out2 = run(command(kind, paths, True), env)
            row = {"trial": name, "command": kind, "kill": kill[1] if kill[0] == "env" else
                   f"SIGKILL once stage {kill[1]} logged step {kill[2]}", "killed": killed, "rerun_ok": code2 == 0,
                   "partial_after_kill": after_kill}
            if code2 != 0:
                row["error"] = out2.strip().splitlines()[-1:] if out2.strip() else []
                identical, diff = False, float("inf")
            elif kind in ("manual", "auto"):
                identical, diff = compare(references[kind], results_of(trial / "runs",
                                                                       json.loads(out2.strip().splitlines()[-1])))
            elif kind == "data":
                digest = data_digest(trial / "data" / "smoke")
                identical, diff = digest == references["data"], 0.0 if digest == references["data"] else float("inf")
                row["content_digest"] = digest
            else:   # a page carries its render time: compared for completeness, not bytes
                page = trial / "reports" / "smoke" / "table2.html"
                manifest = json.loads((trial / "reports" / "smoke" / "manifest.json").read_text())
                identical = page.is_file() and manifest.get("table2", {}).get("status") == "ok"
                diff = 0.0
            row["partial_after_rerun"] = partial_files(*roots) + leftovers(*roots)
            row.update(identical=bool(identical and killed), max_abs_diff=diff)
            partial_total += len(after_kill) + len(row["partial_after_rerun"])
            max_diff = max(max_diff, diff)
            rows.append(row)
            print(f"{name}: killed={killed} identical={row['identical']} diff={diff} partial="
                  f"{len(after_kill)}+{len(row['partial_after_rerun'])} ({time.time() - t0:.0f} s)", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"trials": len(rows), "identical": sum(r["identical"] for r in rows), "max_abs_diff": max_diff,
              "partial_files": partial_total, "wall_s": round(time.time() - t0, 1), "rows": rows}
    print(json.dumps(result))
    return 0 if result["identical"] == result["trials"] and partial_total == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
