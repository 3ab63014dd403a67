#!/usr/bin/env bash
# On a machine with a GPU, in about 9 minutes, write to OUTPUT_DIR:
#   whole calls against linalg.inv (invert eager and graphed, the tracker's update, peak memory),
#   the per-step benchmark, sigma_max's three routes, the CUDA tests, the whole suite with the GPU visible, and invert()'s
#   condition-number panel.                          scripts/gpu_check.sh OUTPUT_DIR
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTPUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -c "import torch, pytorch_lightning as pl; print(torch.__version__, pl.__version__)" \
    >> "$out/nvidia-smi.txt" 2>&1
timeout 130 python3 benchmarks/bench_gpu_calls.py --repeats 3 --output "$out/bench_gpu_calls.json" \
    > "$out/bench_gpu_calls.log" 2>&1
echo "whole calls: exit $?" | tee -a "$out/bench_gpu_calls.log"
timeout 150 python3 benchmarks/bench_gpu.py --output "$out/bench_gpu.json" \
    --markdown "$out/bench_gpu.md" > "$out/bench_gpu.log" 2>&1
echo "gpu benchmark: exit $?" | tee -a "$out/bench_gpu.log"
# sigma_max's three routes on the GPU (the rule takes rows there; squarings are unmeasured)
timeout 45 python3 benchmarks/bench_crossover.py --device cuda --repeats 3 --dtypes float32 \
    float64 --output "$out/bench_crossover_gpu.json" > "$out/bench_crossover_gpu.log" 2>&1
echo "sigma_max routes: exit $?" | tee -a "$out/bench_crossover_gpu.log"
# In parallel where pytest-xdist is installed, each worker on 2 threads: with 16 workers of
# 16 threads each, the suite crawled (48% in 140 s) and its heaviest tests failed a 60 s
# per-test timeout (benchmarks/RESULTS.md, the GPU run of issue 19).
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
per_test=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 150")
# -v names each test's result as it ends, and SIGINT at the limit lets pytest print its
# summary: the last two runs lost the failures' names and reasons with the cut.
OMP_NUM_THREADS=2 timeout -s INT -k 15 200 python3 -m pytest -v -p no:cacheprovider \
    -p no:benchmark --no-header -rfE --tb=line $parallel $per_test > "$out/tests.log" 2>&1
echo "whole suite with the GPU visible: exit $?" | tee -a "$out/tests.log"
timeout 40 python3 benchmarks/bench_inverse.py --panel-only --device cuda \
    --output "$out/panel_gpu.json" > "$out/panel_gpu.log" 2>&1
echo "invert panel: exit $?" | tee -a "$out/panel_gpu.log"
grep "^n=" "$out/panel_gpu.log"
grep -E "(FAILED|ERROR)" "$out/tests.log"
tail -n 2 "$out/tests.log"
