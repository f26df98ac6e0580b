#!/bin/bash
# Issue 11 §1 remainder, one call (<= 420 s): does torch.compile pay (ViT-B/32 -> TinyCLIP-ViT-61M/32, batch 1024,
# bf16), does channels-last pay (RN50 -> TinyCLIP-ResNet-30M-Text-29M, batch 512, bf16), and does a compiled CUDA
# step run in the trainer (the gpu test). Most important first; each part gets what is left of TOTAL_S.
# JSON and logs go to $OUT. On a CPU (no nvidia-smi): DRY=1 PY=.venv/bin/python runs the tiny set without compile.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TINYCLIP_PROGRESS=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; TOTAL_S=${TOTAL_S:-400}; DRY=${DRY:-0}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export TINYCLIP_DATA_ROOT=/tmp/h11c_data TINYCLIP_RUNS_ROOT=/tmp/h11c_runs
START=$SECONDS
part() {  # part NAME CAP_S COMMAND...: runs COMMAND for at most min(CAP_S, time left), logs to $OUT/NAME.log
  local name=$1 cap=$2; shift 2
  local left=$(( TOTAL_S - (SECONDS - START) ))
  (( left < cap )) && cap=$left
  if (( cap < 20 )); then echo "== $name skipped (no time left)"; return; fi
  local t0=$SECONDS
  timeout "$cap" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? $((SECONDS - t0))s (cap ${cap}s)"; tail -n 2 "$OUT/$name.log" | cut -c1-300
}
B=benchmarks/bench_gpu_step.py
if [ "$DRY" = 1 ]; then
  part resnet 120 $PY $B --set tiny --device cpu --threads 1 --rows ceiling --channels-last --out "$OUT/dry.json"
  exit 0
fi
# 1. compile on/off, compute ceiling (no data pipeline): steady-state ratio, compile overhead, break-even steps
part vit_compile 210 $PY $B --set paper --rows ceiling --compile --out "$OUT/compile_vit.json"
# 2. channels-last on/off for the ResNet pair
part resnet_channels_last 60 $PY $B --set resnet --rows ceiling --channels-last --out "$OUT/channels_last_resnet.json"
# 3. the trainer's compiled step (tests/test_gpu.py::test_compiled_steps_on_cuda)
part test_compile 90 $PY -m pytest -m gpu tests/test_gpu.py -k compiled -p no:cacheprovider -rA
# 4. if time is left: the trainer with the in-memory loader, eager vs compile: true (the inductor cache is warm)
part vit_memory_compile 120 $PY $B --set paper --images 4096 --rows memory --compile --out "$OUT/compile_vit_memory.json"
echo "== total $((SECONDS - START))s"
