"""benchmarks/bench_distill_step.py on the smoke set: a few steps per row, the JSON it writes."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_distill_step.py"
ROWS = ("tinyclip_cached", "tinyclip_uncached", "student_contrastive", "open_clip_train")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_distill_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_set_writes_four_rows_and_ratios(bench, env, tmp_path):
    out = tmp_path / "bench" / "distill_step_smoke.json"
    argv = ["--set", "smoke", "--steps", "2", "--warmup", "1", "--batch", "16", "--threads", "1",
            "--data", str(env / "smoke"), "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())

    assert result["set"] == "smoke" and result["batch"] == 16 and result["precision"] == "fp32"
    assert result["teacher_model"] == "TinyCLIP-smoke-teacher" and result["student_model"] == "TinyCLIP-smoke-S50"
    assert result["torch_threads"] == 1 and result["machine"]["cpu_count"] >= 1
    assert result["timestamp"] and "git_commit" in result
    for name in ROWS:
        row = result["rows"][name]
        assert row["pairs_per_s"] > 0 and row["compute_pairs_per_s"] > 0, name
        assert row["timed_steps"] == 2, name
    rows = result["rows"]
    assert result["ratios"]["tinyclip_cached_over_student_contrastive"] == pytest.approx(
        rows["tinyclip_cached"]["pairs_per_s"] / rows["student_contrastive"]["pairs_per_s"])
    assert result["ratios"]["tinyclip_cached_over_tinyclip_uncached"] == pytest.approx(
        rows["tinyclip_cached"]["pairs_per_s"] / rows["tinyclip_uncached"]["pairs_per_s"])
    assert result["ratios"]["tinyclip_uncached_over_open_clip_train"] == pytest.approx(
        rows["tinyclip_uncached_oc_loss"]["pairs_per_s"] / rows["open_clip_train"]["pairs_per_s"])
    assert all(v > 0 for v in result["ratios"].values())
    assert set(result["targets"]) == {"tinyclip_uncached_over_open_clip_train",
                                      "tinyclip_cached_over_student_contrastive"}
    # the cached row never ran the teacher; open_clip_train really distilled, with the same batch and precision
    assert result["teacher_cache"]["misses_while_timed"] == 0
    seen = rows["open_clip_train"]["seen_in_loop"]
    assert seen["distill"] and seen["loss"] == "DistillClipLoss"
    assert seen["batch_size"] == 16 and seen["precision"] == "fp32" and seen["num_batches"] == 3
