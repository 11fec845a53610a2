"""Inner solvers: iterations and time to tolerance, and what ``vmap`` costs (section
``inner`` of ``run.py``).

Methods compared: ``FixedPointIteration``, ``Anderson`` (history 5), ``Broyden`` (memory 20) and
``Newton`` with its default GMRES, all at their defaults except the tolerance: ``rtol`` = 1e-6
in float32 and 1e-10 in float64, with ``atol = 0`` (a purely relative criterion
``||F(x) - x|| <= rtol ||x||``), and ``on_failure="ignore"`` (the status is printed instead).

Sections (every time is ``median [min, max]`` in ms over repeats after one warm-up call; the
statistics columns come from the warm-up call; "F evals" counts calls of the user's map, so
for Newton it includes the JVPs of its inner GMRES; "status" is ``ok`` when converged,
``max`` at ``maxiter``, ``nan`` for NONFINITE):

(a) A DEQ layer ``z = tanh(W z + U x + b)``, hidden 128, batch 32 solved as one problem
    (a 32 x 128 tensor), ``||W||_2 = 0.9``.
(b) The same layer with ``vmap`` over the 32 samples, each stopping on its own: total time,
    max / mean per-sample iterations, batched F evaluations.
(c) Affine contractions ``x = J x + c``, ``n = 200``, ``J`` symmetric with eigenvalues spread
    uniformly over ``[-rho, rho]`` (spectral radius = 2-norm = rho) for rho = 0.5 ... 0.999.
    The plain iteration is capped at ``maxiter`` (it needs ``log(rtol) / log(rho)``).
    "rel. error" is against a dense float64 solve. (--quick: float64 only, rho <= 0.99.)
(d) ``vmap`` over 32 affine problems (n = 100; 50 with --quick) whose radii run from 0.1 to
    0.99: time of the vmapped batch against the slowest problem alone and against a Python
    loop over the 32 problems; by default the batch is compacted to its active elements once
    at most 3/4 of it is active (``funcimplicit._core.loop.COMPACT``), and the "uncompacted"
    columns time the same batch without (every iteration then computes all 32 elements,
    frozen ones included). ``same`` says whether both give identical results (torch.equal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _measure import timed_series
from _report import Section, progress, table
from _timing import Timing, measure

import funcimplicit as fi
from funcimplicit._core import loop as _loop

__all__ = ["section_inner"]

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-10}
STATUS = {0: "ok", 1: "max", 2: "nan"}


@dataclass(frozen=True)
class Settings:
    quick: bool
    dtypes: tuple[torch.dtype, ...]
    affine_dtypes: tuple[torch.dtype, ...]
    radii: tuple[float, ...]
    vmap_n: int
    fpi_maxiter: int
    budget_s: float
    min_repeats: int
    max_repeats: int


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(
            quick=True,
            dtypes=(torch.float32, torch.float64),
            affine_dtypes=(torch.float64,),
            radii=(0.5, 0.9, 0.99),
            vmap_n=50,
            fpi_maxiter=2500,
            budget_s=0.1,
            min_repeats=2,
            max_repeats=10,
        )
    return Settings(
        quick=False,
        dtypes=(torch.float32, torch.float64),
        affine_dtypes=(torch.float32, torch.float64),
        radii=(0.5, 0.9, 0.99, 0.999),
        vmap_n=100,
        fpi_maxiter=5000,
        budget_s=0.2,
        min_repeats=3,
        max_repeats=15,
    )


def methods(dtype: torch.dtype, fpi_maxiter: int) -> dict[str, fi.InnerMethod]:
    tol = TOLERANCE[dtype]
    common: dict[str, Any] = {"rtol": tol, "atol": 0.0, "on_failure": "ignore"}
    return {
        "FixedPointIteration": fi.FixedPointIteration(maxiter=fpi_maxiter, **common),
        "Anderson(5)": fi.Anderson(maxiter=1000, **common),
        "Broyden(20)": fi.Broyden(maxiter=1000, **common),
        "Newton(GMRES)": fi.Newton(**common),
    }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def time_it(fn: Callable[[], Any], s: Settings) -> Timing:
    """One call's timing, repeats sized to the settings' budget."""
    return measure(fn, budget_s=s.budget_s, min_repeats=s.min_repeats, max_repeats=s.max_repeats)


def time_together(fns: list[Callable[[], Any]], s: Settings) -> list[Timing]:
    """Calls compared with each other, timed in turn (their ratios come from one series)."""
    return timed_series(fns, s.budget_s * len(fns), s.min_repeats, s.max_repeats)


def status_of(sol: fi.Solution[Any]) -> str:
    codes = sol.status.reshape(-1).tolist()
    if len(codes) == 1:
        return STATUS[int(codes[0])]
    ok = sum(1 for c in codes if c == 0)
    bad = {STATUS[int(c)] for c in codes if c != 0}
    return f"{ok}/{len(codes)} ok" + (f" ({', '.join(sorted(bad))})" if bad else "")


class Counted:
    """A map that counts its calls (one per batched evaluation under vmap)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


# ----------------------------------------------------------------------------------------------
# (a), (b): a DEQ layer


def deq_problem(
    dtype: torch.dtype, device: str, hidden: int = 128, batch: int = 32, inputs: int = 64
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(hidden, hidden, dtype=torch.float64, generator=g)
    W = 0.9 * W / torch.linalg.matrix_norm(W, 2)
    U = torch.randn(hidden, inputs, dtype=torch.float64, generator=g) / math.sqrt(inputs)
    b = 0.1 * torch.randn(hidden, dtype=torch.float64, generator=g)
    x = torch.randn(batch, inputs, dtype=torch.float64, generator=g)
    return tuple(t.to(device, dtype) for t in (W, U, b, x))


def deq_batch(
    z: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    return torch.tanh(z @ W.mT + x @ U.mT + b)


def deq_sample(
    z: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    return torch.tanh(W @ z + U @ x + b)


def section_deq(s: Settings, device: str) -> tuple[str, str]:
    rows_a: list[list[str]] = []
    rows_b: list[list[str]] = []
    for dtype in s.dtypes:
        W, U, b, x = deq_problem(dtype, device)
        z0 = torch.zeros(x.shape[0], W.shape[0], dtype=dtype, device=device)
        z0s = torch.zeros(W.shape[0], dtype=dtype, device=device)
        for name, method in methods(dtype, s.fpi_maxiter).items():
            counted = Counted(deq_batch)

            def one(
                m: fi.InnerMethod = method,
                f: Callable[..., Any] = counted,
                data: tuple[torch.Tensor, ...] = (z0, W, U, b, x),
            ) -> fi.Solution[Any]:
                return fi.solve_fixed_point(f, *data, method=m)

            sol = one()
            evals = counted.calls
            rel = float(sol.residual_norm / torch.linalg.vector_norm(sol.value))
            counted_s = Counted(deq_sample)

            def batched(
                m: fi.InnerMethod = method,
                f: Callable[..., Any] = counted_s,
                data: tuple[torch.Tensor, ...] = (z0s, W, U, b, x),
            ) -> fi.Solution[Any]:
                z, W_, U_, b_, x_ = data
                return torch.func.vmap(
                    lambda xi: fi.solve_fixed_point(f, z, W_, U_, b_, xi, method=m)
                )(x_)

            sol_b = batched()
            evals_b = counted_s.calls
            t_one, t_b = time_together([one, batched], s)
            rows_a.append(
                [
                    dtype_name(dtype),
                    name,
                    str(int(sol.iterations)),
                    str(evals),
                    status_of(sol),
                    f"{rel:.1e}",
                    t_one.show("ms"),
                ]
            )
            its = sol_b.iterations.to(torch.float64)
            rows_b.append(
                [
                    dtype_name(dtype),
                    name,
                    str(int(its.max())),
                    f"{float(its.mean()):.1f}",
                    str(evals_b),
                    status_of(sol_b),
                    t_b.show("ms"),
                    f"{t_b.median / t_one.median:.2f}",
                ]
            )
    a = table(
        ["dtype", "method", "iterations", "F evals", "status", "rel. residual", "time ms"], rows_a
    )
    b_ = table(
        ["dtype", "method", "max its", "mean its", "F evals", "status", "time ms", "vs (a)"],
        rows_b,
    )
    return a, b_


# ----------------------------------------------------------------------------------------------
# (c), (d): affine contractions


def affine(x: torch.Tensor, J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return J @ x + c


def symmetric_contraction(n: int, radius: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    c = torch.randn(n, dtype=torch.float64, generator=g)
    eig = radius * torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    return (q * eig) @ q.mT, c


def section_affine(s: Settings, device: str, n: int = 200) -> str:
    rows: list[list[str]] = []
    for radius in s.radii:
        J64, c64 = symmetric_contraction(n, radius, 0)
        ref = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - J64, c64).to(device)
        for dtype in s.affine_dtypes:
            J, c = J64.to(device, dtype), c64.to(device, dtype)
            x0 = torch.zeros(n, dtype=dtype, device=device)
            for name, method in methods(dtype, s.fpi_maxiter).items():

                def one(
                    m: fi.InnerMethod = method, data: tuple[torch.Tensor, ...] = (x0, J, c)
                ) -> fi.Solution[Any]:
                    return fi.solve_fixed_point(affine, *data, method=m)

                sol = one()
                err = float(
                    torch.linalg.vector_norm(sol.value.to(torch.float64) - ref)
                    / torch.linalg.vector_norm(ref)
                )
                t = time_it(one, s)
                rows.append(
                    [
                        f"{radius}",
                        dtype_name(dtype),
                        name,
                        str(int(sol.iterations)),
                        status_of(sol),
                        f"{err:.1e}",
                        t.show("ms"),
                    ]
                )
    return table(
        ["radius", "dtype", "method", "iterations", "status", "rel. error", "time ms"], rows
    )


def section_vmap_cost(s: Settings, device: str, batch: int = 32) -> str:
    dtype = torch.float64
    n = s.vmap_n
    # radii from 0.1 to 0.99, geometrically closer to 1 (iterations spread over two decades)
    gaps = torch.logspace(math.log10(0.9), math.log10(0.01), batch, dtype=torch.float64)
    radii = 1.0 - gaps
    Js, cs = [], []
    for i, r in enumerate(radii.tolist()):
        J, c = symmetric_contraction(n, r, 100 + i)
        Js.append(J)
        cs.append(c)
    J_all, c_all = torch.stack(Js).to(device), torch.stack(cs).to(device)
    x0 = torch.zeros(n, dtype=dtype, device=device)
    rows: list[list[str]] = []
    chosen = {k: v for k, v in methods(dtype, s.fpi_maxiter).items() if k != "Broyden(20)"}
    for name, method in chosen.items():

        def batched(m: fi.InnerMethod = method) -> fi.Solution[Any]:
            return torch.func.vmap(lambda J, c: fi.solve_fixed_point(affine, x0, J, c, method=m))(
                J_all, c_all
            )

        def loop(m: fi.InnerMethod = method) -> list[fi.Solution[Any]]:
            return [
                fi.solve_fixed_point(affine, x0, J_all[i], c_all[i], method=m) for i in range(batch)
            ]

        def uncompacted(m: fi.InnerMethod = method) -> fi.Solution[Any]:
            _loop.COMPACT = False
            try:
                return batched(m)
            finally:
                _loop.COMPACT = True

        sol_b = batched()
        sol_u = uncompacted()
        same = all(
            torch.equal(getattr(sol_b, f), getattr(sol_u, f))
            for f in ("value", "iterations", "residual_norm", "status")
        )
        sols = loop()
        # the most iterations; ties (Newton: 1 each) go to the largest radius, the hardest solve
        worst = max(range(batch), key=lambda i: (int(sols[i].iterations), i))

        def slowest(m: fi.InnerMethod = method, i: int = worst) -> fi.Solution[Any]:
            return fi.solve_fixed_point(affine, x0, J_all[i], c_all[i], method=m)

        sol_s = slowest()
        t_b, t_u, t_s, t_l = time_together([batched, uncompacted, slowest, loop], s)
        rows.append(
            [
                name,
                f"{int(sol_b.iterations.max())} / {int(sol_s.iterations)} / "
                f"{sum(int(x.iterations) for x in sols)}",
                status_of(sol_b),
                t_b.show("ms"),
                t_u.show("ms"),
                t_s.show("ms"),
                t_l.show("ms"),
                f"{t_b.median / t_s.median:.2f}",
                f"{t_u.median / t_s.median:.2f}",
                "yes" if same else "NO",
                f"{t_l.median / t_b.median:.2f}",
            ]
        )
    return table(
        [
            "method",
            "its: batch max / slowest / loop total",
            "status",
            "vmap ms",
            "uncompacted vmap ms",
            "slowest alone ms",
            "loop ms",
            "vmap / slowest",
            "uncompacted / slowest",
            "same",
            "loop / vmap",
        ],
        rows,
    )


def section_inner(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``inner``: the inner solvers on a DEQ layer and on affine contractions."""
    s = settings(quick)
    sec = Section("inner", "Inner solvers: iterations and time to tolerance, and vmap")
    sec.markdown.append(
        "FixedPointIteration, Anderson(5), Broyden(20) and Newton(GMRES) at their defaults "
        "except the tolerance: rtol 1e-6 (float32) / 1e-10 (float64), atol 0. Times are "
        "median [min, max] ms after one warm-up call; the statistics come from the warm-up "
        "call; `F evals` counts calls of the user's map (for Newton including the JVPs of its "
        "GMRES); `status` is `ok` when converged, `max` at `maxiter`, `nan` for NONFINITE."
    )
    a, b = section_deq(s, device)
    progress("inner solvers: DEQ")
    sec.markdown += [
        "**(a) DEQ layer z = tanh(W z + U x + b), hidden 128, batch 32 as one problem.**",
        a,
        "**(b) The same DEQ under vmap over the 32 samples (per-sample stopping).** "
        "`vs (a)` = time over the time of (a).",
        b,
        "**(c) Affine contractions x = J x + c, n = 200, J symmetric, spectral radius rho.** "
        f"FixedPointIteration is capped at maxiter = {s.fpi_maxiter}; `rel. error` is "
        "against a dense float64 solve.",
        section_affine(s, device),
    ]
    progress("inner solvers: affine")
    sec.markdown += [
        f"**(d) vmap over 32 affine problems (n = {s.vmap_n}, radii 0.1 ... 0.99), float64**: "
        "the batch runs its slowest element's iterations, compacted to its active elements "
        "as they finish (uncompacted: every iteration computing all 32 elements); against "
        "that slowest problem alone and against a Python loop.",
        section_vmap_cost(s, device),
    ]
    progress("inner solvers: vmap")
    return sec
