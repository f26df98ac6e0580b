"""`make check-resume`: an interrupted and resumed distillation ends exactly like an uninterrupted one.

1. Builds the smoke data (if needed) and runs ``tinyclip distill --recipe recipes/smoke_manual.yaml`` to the end
   in a scratch runs root A (teacher + the 2-stage chain S75 → S50).
2. Copies A's finished teacher run into a second root B (same config, same folder name: reused, not retrained),
   starts the same command in B and kills it with SIGKILL part-way through stage S75, once a checkpoint exists and
   the metrics log has run past it (so truncating the log on resume is exercised too).
3. Runs the command again in B with ``--resume``: S75 continues from its checkpoint, S50 runs from scratch.
4. Prints, as its last line, JSON with ``max_abs_diff`` over every final metric of every stage (evaluation and
   final training losses) and ``weights_max_abs_diff`` over the final students' weights (expect 0.0).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "smoke_manual.yaml"
KILL_STAGE = 0  # index of the stage to interrupt (S75)


def distill(runs_root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TINYCLIP_RUNS_ROOT": str(runs_root), "TINYCLIP_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "tinyclip", "distill", "--recipe", str(RECIPE), *extra],
                            env=env, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"check-resume: distill exited with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def numeric_leaves(obj, prefix: str = "") -> dict[str, float]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in numeric_leaves(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix.rstrip("."): float(obj)}
    return {}


def main() -> int:
    from safetensors.torch import load_file

    from tinyclip.data import build
    from tinyclip.export import WEIGHTS_NAME
    from tinyclip.recipe import load_recipe, resolve_recipe, teacher_recipe
    from tinyclip.runs import Run, config_hash

    build("smoke")
    scratch = Path(tempfile.mkdtemp(prefix="tinyclip-check-resume-"))
    root_a, root_b = scratch / "uninterrupted", scratch / "resumed"
    t0 = time.time()
    try:
        reference = finish(distill(root_a))
        print(f"uninterrupted run finished in {time.time() - t0:.0f} s", file=sys.stderr)

        recipe = load_recipe(RECIPE)
        teacher_hash = config_hash(resolve_recipe(teacher_recipe(recipe))[-1])
        shutil.copytree(root_a / teacher_hash, root_b / teacher_hash)
        victim = Run(resolve_recipe(recipe)[KILL_STAGE], root=root_b)
        stage = recipe.stages[KILL_STAGE]

        proc = distill(root_b)
        killed_at = None
        while proc.poll() is None:
            if victim.has_checkpoint():
                # wait until the log has gone past the checkpoint, then kill without warning
                ckpt_step = stage.checkpoint_every
                if any(r.get("step", -1) >= ckpt_step for r in victim.read_metrics()):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed_at = max(r["step"] for r in victim.read_metrics())
                    break
            time.sleep(0.05)
        if killed_at is None:
            sys.exit("check-resume: the run finished before it could be killed; raise the smoke stage's steps")
        assert not victim.is_finished()
        print(f"killed stage {stage.name} after step {killed_at} (checkpoint at step "
              f"{stage.checkpoint_every}); resuming", file=sys.stderr)
        resumed = finish(distill(root_b, "--resume"))

        diffs, weight_diff = [], 0.0
        for ref, res in zip(reference, resumed, strict=True):
            a, b = numeric_leaves({"metrics": ref["metrics"], "train": ref["train"]}), \
                numeric_leaves({"metrics": res["metrics"], "train": res["train"]})
            assert a.keys() == b.keys(), (a.keys(), b.keys())
            diffs += [abs(a[k] - b[k]) for k in a]
            wa, wb = load_file(Path(ref["model_dir"]) / WEIGHTS_NAME), load_file(Path(res["model_dir"]) / WEIGHTS_NAME)
            weight_diff = max(weight_diff, max(float((wa[k] - wb[k]).abs().max()) for k in wa))
        result = {"max_abs_diff": max(diffs), "weights_max_abs_diff": weight_diff, "metrics_compared": len(diffs),
                  "killed_stage": stage.name, "killed_after_step": killed_at,
                  "resumed_stages": [s["stage"] for s in resumed if not s["reused"]],
                  "wall_s": round(time.time() - t0, 1)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["max_abs_diff"] <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
