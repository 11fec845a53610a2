#!/usr/bin/env bash
# The test suite, then the benchmark suite, on a lent CUDA machine, in one command (about
# 12 minutes on an H100, within a 15-minute device budget):
#
#     bash benchmarks/gpu.sh            # from the repository root; results under $OUT
#
# Writes, under $OUT (default benchmarks/results/gpu, git-ignored):
#   device.txt          nvidia-smi and what torch sees
#   tests.log           the test suite on CUDA (python -m pytest --device cuda), stopped after
#                       TESTS_S seconds so the benchmarks keep their share of the budget
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
# the sections --quick leaves out by default (inner, compiled) named, compiled last (its
# compiles take minutes). results.md is
# rewritten after every section, so if the time limit stops the run, what was done is kept.
#
# TESTS_S and BENCH_S (default 300 and 420 seconds) bound the two parts: a device command of
# at most 10 minutes takes e.g. TESTS_S=200 BENCH_S=320. A `python` is needed on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
TESTS_S="${TESTS_S:-300}"
BENCH_S="${BENCH_S:-420}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

versions='import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
{ nvidia-smi || true; python -c "$versions"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"

tests=0
# SIGINT at the limit: pytest stops and still prints its summary (failures listed by -rf).
# TESTS names test files to run instead of the whole suite (a shorter device session).
# shellcheck disable=SC2086
timeout -s INT -k 30 "$TESTS_S" python -m pytest -q -rf --maxfail=25 --device cuda \
    -m 'not inductor and not typing' ${TESTS:-} > "$OUT/tests.log" 2>&1 || tests=$?
tail -n 3 "$OUT/tests.log"
if [ "$tests" -eq 124 ]; then
    echo "tests stopped at the time limit ($TESTS_S s): see $OUT/tests.log"
fi

status=0
timeout "$BENCH_S" python benchmarks/run.py --device cuda --quick --out "$OUT/bench" \
    --sections ridge linear auto imaml deq inner overhead logistic compiled \
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
