#!/bin/bash
# Issue 11 GPU check, one call: the paper-shape benchmark (benchmarks/bench_gpu_step.py --set paper) and the
# gpu-marked tests. Run from the project root; JSON and logs go to $OUT. SET=tiny PY=.venv/bin/python tests it on a CPU.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TINYCLIP_PROGRESS=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; SET=${SET:-paper}; PY=${PY:-python3}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export TINYCLIP_DATA_ROOT=/tmp/h11gpu_data TINYCLIP_RUNS_ROOT=/tmp/h11gpu_runs
SECONDS=0
timeout ${BENCH_S:-330} $PY benchmarks/bench_gpu_step.py --set "$SET" --out "$OUT/gpu_step_$SET.json" > "$OUT/bench.log" 2>&1
echo "== bench rc=$? ${SECONDS}s"; tail -n 3 "$OUT/bench.log" | cut -c1-400
SECONDS=0
timeout ${TEST_S:-200} $PY -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -rA > "$OUT/test_gpu.log" 2>&1
echo "== test-gpu rc=$? ${SECONDS}s"; grep -E "passed|failed|skipped|error" "$OUT/test_gpu.log" | tail -n 8
