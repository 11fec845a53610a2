#!/usr/bin/env bash
# The test suite, then the benchmark suite, on a lent CUDA machine, in one command (about
# 12 minutes on an H100, within a 15-minute device budget):
#
#     bash benchmarks/gpu.sh            # from the repository root; results under $OUT
#
# Writes, under $OUT (default benchmarks/results/gpu, git-ignored):
#   device.txt          nvidia-smi and what torch sees
#   tests.log           the test suite on CUDA (python -m pytest --device cuda), stopped after
#                       300 s so the benchmarks keep their share of the budget
#   bench/results.md    the tables (plus bench/<section>.md and bench/*.png), as on CPU
#   bench.log           progress and any traceback
#
# The tests run with --device cuda (tests/conftest.py makes CUDA the default device; modules
# that test the CPU by nature skip themselves), without the slow inductor and typing marks.
# A test failure is reported in the exit status but does not stop the benchmarks. The
# benchmark sections check every CUDA result against a reference (the error columns).
#
# The benchmarks run --quick (16 and 64 iMAML tasks, shorter series: a Python loop over tasks
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

tests=0
timeout 300 python -m pytest -q -x --device cuda -m 'not inductor and not typing' \
    > "$OUT/tests.log" 2>&1 || tests=$?
tail -n 3 "$OUT/tests.log"
if [ "$tests" -eq 124 ]; then
    echo "tests stopped at the time limit (300 s): see $OUT/tests.log"
fi

status=0
timeout 420 python benchmarks/run.py --device cuda --quick --out "$OUT/bench" \
    --sections ridge logistic imaml deq compiled linear overhead inner auto \
    2> "$OUT/bench.log" > /dev/null || status=$?
tail -n 5 "$OUT/bench.log"
if [ "$status" -eq 124 ]; then
    echo "stopped at the time limit: $OUT/bench/results.md has the sections done so far"
fi
echo "results: $OUT/bench/results.md; tests: $OUT/tests.log"
if [ "$status" -eq 0 ] && [ "$tests" -ne 0 ]; then
    status="$tests"
fi
exit "$status"
