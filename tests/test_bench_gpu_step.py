"""benchmarks/bench_gpu_step.py at its tiny CPU size: every row is measured and the JSON carries the ratios."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.slow
def test_bench_gpu_step_tiny_on_cpu(env, runs, tmp_path):
    from bench_gpu_step import main

    out = tmp_path / "gpu_step.json"
    assert main(["--set", "tiny", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {"ceiling", "tinyclip_memory", "tinyclip_stream", "open_clip_train"}
    assert all(r["pairs_per_s"] > 0 and r["ratio_to_ceiling"] > 0 for r in rows.values())
    assert rows["open_clip_train"]["distill"] and rows["tinyclip_memory"]["timed_steps"] == 3
    assert "target_cpu" in result["ratios"] and "tinyclip_memory_over_open_clip_train" in result["ratios"]
