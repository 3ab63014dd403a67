#!/usr/bin/env bash
# Run the CUDA tests, the GPU benchmark and invert()'s condition-number panel on a machine with
# a GPU, in under 6 minutes, and write the results to OUTPUT_DIR:  scripts/gpu_check.sh OUTPUT_DIR
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTPUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider --no-header tests/test_cuda.py \
    > "$out/cuda_tests.log" 2>&1
echo "cuda tests: exit $?" | tee -a "$out/cuda_tests.log"
timeout 170 python3 benchmarks/bench_gpu.py --output "$out/bench_gpu.json" \
    --markdown "$out/bench_gpu.md" \
    > "$out/bench_gpu.log" 2>&1
echo "gpu benchmark: exit $?" | tee -a "$out/bench_gpu.log"
timeout 100 python3 benchmarks/bench_inverse.py --panel-only --device cuda \
    --output "$out/panel_gpu.json" > "$out/panel_gpu.log" 2>&1
echo "invert panel: exit $?" | tee -a "$out/panel_gpu.log"
grep "^n=" "$out/panel_gpu.log"
tail -n 3 "$out/cuda_tests.log"
