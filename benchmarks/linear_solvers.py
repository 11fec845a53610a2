"""Iterative linear solvers against the matvec floor, a dense solve, vmap and the wrapper
(section ``linear`` of ``run.py``).

Problems (dense, built in float64 then cast, fixed seed):

* CG on a symmetric positive definite ``A = W W^T / n + 0.1 I`` (condition number ~40);
* GMRES(restart=20) and GMRES(restart=50) on a non-symmetric ``A = G + 1.5 sqrt(n) I``
  (G standard normal: eigenvalues in a disc of radius ~sqrt(n) around 1.5 sqrt(n),
  condition number ~10);

with ``rtol = 1e-6`` in float64 and ``1e-5`` in float32, so a solve takes a few dozen
iterations. Every figure is ``median [min, max]`` over repeats after warm-up, and every
comparison is a ratio of medians measured in the same run:

* the matvec floor is ``iterations x`` the median time of one bare ``A @ v``: an iterative
  solver cannot beat it, and ``time / floor`` is what the solver adds on top of the matvecs;
* ``torch.linalg.solve`` (LU) is the dense reference;
* for CG, TorchOpt's ``torchopt.linalg.cg`` (the CG behind ``torchopt.linear_solve.solve_cg``,
  same stopping rule ``||r|| <= rtol ||b||``) on the same problem, in the same series;
* ``vmap`` over a batch of right-hand sides sharing ``A`` against a Python loop over them;
* ``fi.linear_solve`` (the differentiable wrapper) against calling the solver directly, as
  the per-repeat difference of interleaved calls, in microseconds.

On a shared machine a competing process slows everything by up to 20x (two threads per op
on two cores), so each series also records how busy the rest of the machine was, and a
disturbed series is re-measured once after waiting for a quiet moment (marked ⚠ if it
stays disturbed).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _report import NOT_INSTALLED, Plot, Result, Section, progress, table
from _timing import Timing, others_load, samples_interleaved, synchronize, wait_for_quiet

import funcimplicit as fi

__all__ = ["section_linear"]

RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}
DTYPE_NAME = {torch.float64: "float64", torch.float32: "float32"}


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    batch: int
    budget_s: float  # about how long each timed series runs
    min_repeats: int  # of the single-solve series
    loop_repeats: int  # of the (slow) vmap / Python loop series
    paired_repeats: int  # of the interleaved wrapper/bare comparison (at least)
    tiny_repeats: int  # of the wrapper comparison on a problem solved in one iteration
    wait_budget_s: float  # total time the run may spend waiting for a quiet machine


FULL = Settings((500, 2000), (torch.float64, torch.float32), 32, 0.25, 5, 3, 10, 200, 20.0)
QUICK = Settings((300, 1000), (torch.float64, torch.float32), 16, 0.1, 5, 2, 5, 100, 4.0)


@dataclass(frozen=True)
class Case:
    label: str
    operator: str  # "spd" or "nonsym"
    make: Callable[[float], fi.CG | fi.GMRES]


CASES = (
    Case("CG", "spd", lambda rtol: fi.CG(rtol=rtol)),
    Case("GMRES(20)", "nonsym", lambda rtol: fi.GMRES(rtol=rtol, restart=20)),
    Case("GMRES(50)", "nonsym", lambda rtol: fi.GMRES(rtol=rtol, restart=50)),
)


# ----------------------------------------------------------------------------------------------
# Problems


def make_operators(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The two float64 matrices of size ``n``, on the CPU (moved and cast by the caller)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    spd = w @ w.T / n + 0.1 * eye
    nonsym = torch.randn(n, n, generator=g, dtype=torch.float64) + 1.5 * math.sqrt(n) * eye
    return {"spd": spd, "nonsym": nonsym}


def condition_numbers(ops: dict[str, torch.Tensor]) -> dict[str, float]:
    """The condition numbers of the two matrices."""
    eig = torch.linalg.eigvalsh(ops["spd"])
    sv = torch.linalg.svdvals(ops["nonsym"])
    return {"spd": float(eig[-1] / eig[0]), "nonsym": float(sv[0] / sv[-1])}


# ----------------------------------------------------------------------------------------------
# Measurements


EMPTY = Timing(math.nan, math.nan, math.nan, 0)  # not measured (yet)


@dataclass
class Row:
    case: str
    n: int
    dtype: str
    converged: bool = False
    iterations: int = 0
    matvec_calls: int = 0
    matvec: Timing = EMPTY
    solve: Timing = EMPTY
    dense: Timing = EMPTY
    peer: Timing = EMPTY  # TorchOpt's CG (CG rows, TorchOpt installed)
    peer_note: str = ""  # why there is no peer timing
    batch: int = 0
    batch_iters: tuple[int, int] = (0, 0)
    batch_converged: bool = False
    batched_matvec: Timing = EMPTY
    vmap: Timing = EMPTY
    loop: Timing = EMPTY
    bare: Timing = EMPTY
    wrapped: Timing = EMPTY
    wrapped_grad: Timing = EMPTY
    overhead: Timing = EMPTY  # paired differences, seconds
    overhead_grad: Timing = EMPTY


def bench_case(
    case: Case,
    a: torch.Tensor,
    b: torch.Tensor,
    big_b: torch.Tensor,
    s: Settings,
    to: Any | None = None,
) -> Row:
    """All measurements of one solver on one matrix; each comparison is one interleaved series."""
    dtype = a.dtype
    solver = case.make(RTOL[dtype])
    row = Row(case.label, a.shape[0], DTYPE_NAME[dtype], batch=big_b.shape[0])
    tag = f"{case.label} n={row.n} {row.dtype}"

    def mv(v: torch.Tensor) -> torch.Tensor:
        return a @ v

    # Statistics of one solve, and how many matvecs it really makes (not timed).
    calls = 0

    def counting(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return a @ v

    result = solver.run(counting, b)
    row.iterations = int(result.iterations)
    row.converged = bool(result.converged)
    row.matvec_calls = calls

    # 1. Solve, the matvec floor and the dense solve, interleaved call by call. The floor
    # series times `iterations` single matvecs one by one (median over all of them).
    single: list[float] = []

    def matvecs() -> None:
        for _ in range(max(row.iterations, 1)):
            start = time.perf_counter()
            a @ b
            synchronize()
            single.append(time.perf_counter() - start)

    fns: list[Callable[[], Any]] = [
        lambda: solver(mv, b),
        matvecs,
        lambda: torch.linalg.solve(a, b),
    ]
    if case.operator != "spd":
        row.peer_note = "-"
    elif to is None:
        row.peer_note = NOT_INSTALLED
    else:
        rtol = RTOL[dtype]
        x_peer = to.linalg.cg(mv, b, rtol=rtol)
        error = float((x_peer - solver(mv, b)).abs().max() / b.abs().max())
        if not error < 100 * rtol:
            raise RuntimeError(f"{tag}: TorchOpt's CG and fi.CG disagree ({error:.1e})")
        fns.append(lambda: to.linalg.cg(mv, b, rtol=rtol))
    one = sum(_time_once(fn) for fn in fns)  # also the warm-up
    repeats = _clamp(s.budget_s / one, s.min_repeats, 50)

    def series_single() -> tuple[Timing, ...]:
        single.clear()
        solve, _, dense, *peer = samples_interleaved(fns, repeats=repeats, warmup=0)
        out = (Timing.of(solve), Timing.of(single), Timing.of(dense))
        return out + tuple(Timing.of(x) for x in peer)

    row.solve, row.matvec, row.dense, *peer = _retry_if_noisy(series_single, f"{tag} single")
    if peer:
        row.peer = peer[0]

    # 2. vmap over the batch (A shared, closed over) against a Python loop over it, and the
    # batched matvec vmap(mv)(B). The loop makes the same call as the solve timed above,
    # already warm, so only the vmap-ed calls get a warm-up here.
    batched = torch.func.vmap(lambda rhs: solver(mv, rhs))
    batched_mv = torch.func.vmap(mv)
    stats = torch.func.vmap(lambda rhs: solver.run(mv, rhs))(big_b)
    row.batch_iters = (int(stats.iterations.min()), int(stats.iterations.max()))
    row.batch_converged = bool(stats.converged.all())
    single_batched: list[float] = []

    def batched_matvecs() -> None:
        for _ in range(max(row.batch_iters[1], 1)):
            start = time.perf_counter()
            batched_mv(big_b)
            synchronize()
            single_batched.append(time.perf_counter() - start)

    batched(big_b)
    batched_matvecs()

    def series_batch() -> tuple[Timing, ...]:
        single_batched.clear()
        vmap, loop, _ = samples_interleaved(
            [
                lambda: batched(big_b),
                lambda: [solver(mv, rhs) for rhs in big_b.unbind(0)],
                batched_matvecs,
            ],
            repeats=s.loop_repeats,
            warmup=0,
        )
        return Timing.of(vmap), Timing.of(loop), Timing.of(single_batched)

    row.vmap, row.loop, row.batched_matvec = _retry_if_noisy(series_batch, f"{tag} vmap/loop")

    # 3. Wrapper overhead: bare / wrapped / wrapped with A.requires_grad, one of each per
    # repeat; the overhead is the per-repeat difference.
    paired = _clamp(s.budget_s / row.solve.median / 3, s.paired_repeats, 200)
    row.bare, row.wrapped, row.wrapped_grad, row.overhead, row.overhead_grad = _retry_if_noisy(
        lambda: wrapper_overhead(solver, a, b, repeats=paired), f"{tag} wrapper", check=3
    )
    return row


def wrapper_overhead(
    solver: fi.CG | fi.GMRES, a: torch.Tensor, b: torch.Tensor, *, repeats: int
) -> tuple[Timing, Timing, Timing, Timing, Timing]:
    """``(bare, wrapped, wrapped_grad, overhead, overhead_grad)``.

    The overheads are the per-repeat differences wrapped - bare."""

    def mv(v: torch.Tensor) -> torch.Tensor:
        return a @ v

    def matvec_args(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return m @ v

    a_grad = a.detach().clone().requires_grad_(True)
    bare, wrapped, wrapped_grad = samples_interleaved(
        [
            lambda: solver(mv, b),
            lambda: fi.linear_solve(matvec_args, b, a, solve=solver),
            lambda: fi.linear_solve(matvec_args, b, a_grad, solve=solver),
        ],
        repeats=repeats,
        warmup=2,
    )
    return (
        Timing.of(bare),
        Timing.of(wrapped),
        Timing.of(wrapped_grad),
        Timing.of([w - x for w, x in zip(wrapped, bare, strict=True)]),
        Timing.of([w - x for w, x in zip(wrapped_grad, bare, strict=True)]),
    )


NOISE = 1.5  # a series whose median exceeds NOISE x its min saw interference
LOAD = 0.2  # ... or one during which other processes kept this many CPUs busy
_wait_budget = [60.0]  # Settings.wait_budget_s of this run
retries: list[str] = []  # what was re-measured, for the report
series_load: dict[str, float] = {}  # CPUs other processes used during each kept series
_waited = [0.0]


def _noise(timings: tuple[Timing, ...]) -> float:
    return max(t.median / t.min for t in timings)


def _badness(timings: tuple[Timing, ...], load: float) -> float:
    return max(_noise(timings) / NOISE, (load if load == load else 0.0) / LOAD)


def _retry_if_noisy(run: Callable[[], Any], label: str, check: int | None = None) -> Any:
    """Run a series; if it looks disturbed (one of its first ``check`` timings has a median far
    above its min, or other processes were busy meanwhile), wait for a quiet moment, run it
    once more and keep the less disturbed run. What stays disturbed is marked in the tables."""
    first, load = others_load(run)
    bad = _badness(first[:check], load)
    if bad <= 1.0:
        series_load[label] = load
        return first
    start = time.perf_counter()
    wait_for_quiet(max_wait_s=max(0.0, min(20.0, _wait_budget[0] - _waited[0])))
    _waited[0] += time.perf_counter() - start
    second, load2 = others_load(run)
    bad2 = _badness(second[:check], load2)
    retries.append(
        f"{label} (median/min {_noise(first[:check]):.1f}, others {load:.2f} CPU -> "
        f"{_noise(second[:check]):.1f}, {load2:.2f})"
    )
    if bad2 < bad:
        series_load[label] = load2
        return second
    series_load[label] = load
    return first


def _time_once(fn: Callable[[], Any]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, round(value)))


# ----------------------------------------------------------------------------------------------
# Output


def noisy(t: Timing) -> str:
    """A mark when the median sits far above the minimum: interference during the series."""
    return " ⚠" if t.median > NOISE * t.min else ""


def busy(r: Row, series: str) -> str:
    """A mark when other processes kept the machine busy during the series."""
    load = series_load.get(f"{r.case} n={r.n} {r.dtype} {series}", 0.0)
    return f" ⚠ (others {load:.1f} CPU)" if load > LOAD else ""


Tiny = tuple[str, str, Timing, Timing, Timing, Timing, Timing]


def _tables(rows: list[Row], tiny: list[Tiny]) -> list[str]:
    """The section's paragraphs and tables."""
    md = [
        "**Single solve: time vs the matvec floor and vs torch.linalg.solve.** Solve, "
        "matvecs and `torch.linalg.solve` are timed call by call in turn. floor = iterations x "
        "median(one `A @ v`); overhead/iter = (solve - floor) / iterations. `matvecs` counts "
        "every matvec call (CG adds one true-residual check, GMRES one per restart); the floor "
        "uses iterations only. For CG, TorchOpt's `torchopt.linalg.cg` (behind "
        "`torchopt.linear_solve.solve_cg`) joins the same series: TorchOpt/fi > 1 means fi.CG "
        "is faster."
    ]
    out = []
    for r in rows:
        floor = r.iterations * r.matvec.median
        per_iter = (r.solve.median - floor) / max(r.iterations, 1) * 1e6
        out.append(
            [
                r.case,
                str(r.n),
                r.dtype,
                str(r.iterations) + ("" if r.converged else " (NOT converged)"),
                str(r.matvec_calls),
                r.matvec.show("us") + noisy(r.matvec),
                r.solve.show("ms") + noisy(r.solve),
                f"{floor * 1e3:.2f}",
                f"**{r.solve.median / floor:.2f}**{busy(r, 'single')}",
                f"{per_iter:.0f}",
                r.dense.show("ms") + noisy(r.dense),
                f"{r.solve.median / r.dense.median:.2f}",
                r.peer_note or r.peer.show("ms") + noisy(r.peer),
                r.peer_note or f"**{r.peer.median / r.solve.median:.2f}**",
            ]
        )
    header = ["solver", "n", "dtype", "iters", "matvecs", "`A @ v` µs", "solve ms", "floor ms"]
    header += ["solve/floor", "overhead/iter µs", "linalg.solve ms", "solve/linalg.solve"]
    header += ["TorchOpt CG ms", "TorchOpt/fi"]
    md.append(table(header, out))

    md.append(
        "**vmap over a batch of right-hand sides (shared A) vs a Python loop.** vmap, loop "
        "and batched matvecs (`vmap(mv)(B)`, one by one) timed in turn. vmap floor = max "
        "iterations x median(batched matvec). Each right-hand side stops on its own, so "
        "iterations differ within the batch."
    )
    out = []
    for r in rows:
        floor = r.batch_iters[1] * r.batched_matvec.median
        out.append(
            [
                r.case,
                str(r.n),
                r.dtype,
                str(r.batch),
                f"{r.batch_iters[0]}-{r.batch_iters[1]}"
                + ("" if r.batch_converged else " (NOT all converged)"),
                r.batched_matvec.show("us") + noisy(r.batched_matvec),
                r.vmap.show("ms") + noisy(r.vmap),
                f"{r.vmap.median / floor:.2f}",
                r.loop.show("ms") + noisy(r.loop),
                f"**{r.loop.median / r.vmap.median:.1f}**{busy(r, 'vmap/loop')}",
            ]
        )
    header = ["solver", "n", "dtype", "batch", "iters (min-max)", "batched matvec µs"]
    header += ["vmap ms", "vmap/floor", "loop ms", "loop/vmap"]
    md.append(table(header, out))

    md.append(
        "**Wrapper overhead: fi.linear_solve vs the bare solver call.** Bare call, "
        "`fi.linear_solve` and `fi.linear_solve` with `A.requires_grad` (which also records "
        "the autograd node; no backward) timed in turn; overhead = median [min, max] of the "
        f"per-repeat difference wrapped - bare. First on `A = 2 I` (n = {TINY_N}, float64), "
        "solved in one iteration, so the solve itself is short and the overhead stands out:"
    )
    header = ["solver", "repeats", "bare µs", "linear_solve µs", "overhead µs"]
    header += ["linear_solve (grad) µs", "overhead (grad) µs"]
    out = [
        [
            label,
            str(bare.repeats),
            bare.show("us"),
            w.show("us"),
            o.show("us") + _tiny_mark(label),
            wg.show("us"),
            og.show("us"),
        ]
        for label, _, bare, w, wg, o, og in tiny
    ]
    md.append(table(header, out))
    md.append("Then on the problems above (the overhead is within the solve's run-to-run noise):")
    out = []
    for r in rows:
        out.append(
            [
                r.case,
                str(r.n),
                r.dtype,
                str(r.bare.repeats),
                r.bare.show("ms"),
                r.wrapped.show("ms"),
                r.overhead.show("us"),
                f"{r.wrapped.median / r.bare.median:.3f}{busy(r, 'wrapper')}",
                r.wrapped_grad.show("ms"),
                r.overhead_grad.show("us"),
            ]
        )
    header = ["solver", "n", "dtype", "repeats", "bare ms", "linear_solve ms", "overhead µs"]
    header += ["linear_solve/bare", "linear_solve (grad) ms", "overhead (grad) µs"]
    md.append(table(header, out))
    return md


TINY_N = 64


def _tiny_mark(label: str) -> str:
    load = series_load.get(f"{label} A=2I wrapper", 0.0)
    return f" ⚠ (others {load:.1f} CPU)" if load > LOAD else ""


def bench_tiny(s: Settings, device: str) -> list[Tiny]:
    """Wrapper overhead on ``A = 2 I``, which every solver solves in one iteration."""
    a = 2.0 * torch.eye(TINY_N, dtype=torch.float64, device=device)
    b = torch.randn(TINY_N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    b = b.to(device)
    out = []
    for case in CASES:
        solver = case.make(RTOL[torch.float64])
        if int(solver.run(lambda v: a @ v, b).iterations) != 1:
            raise RuntimeError(f"{case.label} took more than one iteration on A = 2 I")
        timings = _retry_if_noisy(
            functools.partial(wrapper_overhead, solver, a, b, repeats=s.tiny_repeats),
            f"{case.label} A=2I wrapper",
            check=3,
        )
        out.append((case.label, "float64", *timings))
    return out


def _results(rows: list[Row]) -> list[Result]:
    """Solve, matvec floor and dense solve of every case, for the plot."""
    out = []
    for r in rows:
        case = f"{r.case}\nn={r.n}, {r.dtype.replace('float', 'f')}"
        floor = r.iterations * r.matvec.median
        floor_t = Timing(floor, r.iterations * r.matvec.min, r.iterations * r.matvec.max, 0)
        out += [
            Result(case, "solve", r.solve),
            Result(case, "matvec floor", floor_t),
            Result(case, "torch.linalg.solve", r.dense),
        ]
    return out


def section_linear(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``linear``: CG and GMRES on dense problems; TorchOpt's CG (``to``) beside CG."""
    s = QUICK if quick else FULL
    retries.clear()
    series_load.clear()
    _waited[0] = 0.0
    _wait_budget[0] = s.wait_budget_s
    rows: list[Row] = []
    conds: list[str] = []
    for n in s.sizes:
        ops64 = make_operators(n)
        c = condition_numbers(ops64)
        conds.append(f"n={n}: cond(SPD) {c['spd']:.0f}, cond(non-symmetric) {c['nonsym']:.0f}")
        g = torch.Generator().manual_seed(1)
        b64 = torch.randn(n, generator=g, dtype=torch.float64)
        big_b64 = torch.randn(s.batch, n, generator=g, dtype=torch.float64)
        for dtype in s.dtypes:
            b, big_b = b64.to(device, dtype), big_b64.to(device, dtype)
            ops = {k: v.to(device, dtype) for k, v in ops64.items()}
            for case in CASES:
                rows.append(bench_case(case, ops[case.operator], b, big_b, s, to))
                progress(f"{case.label} n={n} {DTYPE_NAME[dtype]}")
    tiny = bench_tiny(s, device)
    sec = Section("linear", "Linear solvers: CG and GMRES against the matvec floor")
    sec.markdown.append(
        f"Sizes {list(s.sizes)}, batch {s.batch}, rtol 1e-6 (float64) / 1e-5 (float32). CG on "
        "A = W W^T/n + 0.1 I (SPD); GMRES on A = G + 1.5 sqrt(n) I (non-symmetric); "
        + "; ".join(conds)
        + f". ⚠ marks interference: a median > {NOISE} x its min, or other processes using > "
        f"{LOAD} CPU during the series (from /proc); such a series is re-measured once after "
        "waiting for a quiet moment, and the less disturbed run is kept."
    )
    sec.markdown += _tables(rows, tiny)
    worst = max(series_load.values(), default=0.0)
    sec.markdown.append(
        f"_Other processes: at most {worst:.2f} CPU busy during a kept series. Re-measured: "
        f"{'; '.join(retries) or 'none'}. Waited {_waited[0]:.0f} s for quiet._"
    )
    sec.results = _results(rows)
    sec.plots.append(
        Plot(
            "linear",
            "Linear solves: time per solve vs the matvec floor",
            tuple(dict.fromkeys(r.case for r in sec.results)),
            ("solve", "matvec floor", "torch.linalg.solve"),
        )
    )
    return sec
