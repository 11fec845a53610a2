#!/usr/bin/env bash
# The benchmark suite on a lent CUDA machine, in one command (under 8 minutes on an H100):
#
#     bash benchmarks/gpu.sh            # from the repository root; results under $OUT
#
# Writes, under $OUT (default benchmarks/results/gpu, git-ignored):
#   device.txt          nvidia-smi and what torch sees
#   bench/results.md    the tables (plus bench/<section>.md and bench/*.png), as on CPU
#   bench.log           progress and any traceback
#
# The test suite is not run here: its tests build CPU tensors and have no device option, so
# on this machine they would test the CPU again (CI does that). The benchmark sections check
# every CUDA result against a reference (the error columns of their tables).
#
# The run is --quick (16 and 64 iMAML tasks, shorter series: a Python loop over tasks
# launches thousands of tiny kernels per task, which makes 256 tasks slow on a GPU), with
# the sections --quick leaves out by default (compiled, inner) named last. results.md is
# rewritten after every section, so if the time limit stops the run, what was done is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

versions='import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
{ nvidia-smi || true; python -c "$versions"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"

status=0
timeout 450 python benchmarks/run.py --device cuda --quick --out "$OUT/bench" \
    --sections ridge logistic imaml deq compiled linear overhead inner auto \
    2> "$OUT/bench.log" > /dev/null || status=$?
tail -n 5 "$OUT/bench.log"
if [ "$status" -eq 124 ]; then
    echo "stopped at the time limit: $OUT/bench/results.md has the sections done so far"
fi
echo "results: $OUT/bench/results.md"
exit "$status"
