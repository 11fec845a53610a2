"""The default linear solver, ``fi.Auto`` (section ``auto`` of ``run.py``).

Two tables. First, the ridge hypergradient at d = 100 with each library's *default* backward
solve, next to ``solve=fi.LU()`` and ``solve=fi.GMRES()`` (funcimplicit's default before
``Auto``), all timed interleaved in one series. Second, where ``Auto``'s dense threshold
comes from: dense factorization against CG/GMRES on an SPD problem (ridge) and on a
non-symmetric one (a contractive tanh fixed point), at growing sizes.

    PYTHONPATH=. python benchmarks/run.py --sections auto
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from _measure import Method, max_abs_diff, probe, run_methods
from _report import NOT_INSTALLED, Section, progress, table
from implicit import (
    FULL,
    QUICK,
    Ridge,
    _ridge_optimality_lam_first,
    hypergrad_autograd,
    ridge_closed_form,
    ridge_dense,
    ridge_optimality,
)

import funcimplicit as fi

__all__ = ["section_auto"]


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _fi_default_rows(p: Ridge, to: Any | None) -> list[Method]:
    """Ridge d = 100, inner ``torch.linalg.solve``, the backward solve varied."""

    def fi_row(name: str, short: str, solve: Any) -> Method:
        solver = fi.implicit_root(ridge_optimality, argnums=3, solve=solve)(ridge_dense)
        return Method(name, lambda: hypergrad_autograd(solver, p, p.lam), short)

    methods = [
        fi_row("funcimplicit: default solve (fi.Auto: dense LU here)", "fi default", None),
        fi_row("funcimplicit: solve=fi.LU()", "fi LU", fi.LU()),
        fi_row(
            "funcimplicit: solve=fi.Auto(symmetric=True) (Cholesky)",
            "fi Auto SPD",
            fi.Auto(symmetric=True),
        ),
        fi_row(
            "funcimplicit: solve=fi.GMRES() (the default before fi.Auto)", "fi GMRES", fi.GMRES()
        ),
    ]
    name = "TorchOpt: default solve (solve_normal_cg)"
    if to is None:
        methods.append(Method(name, None, "TorchOpt default", note=NOT_INSTALLED))
        return methods
    root = to.diff.implicit.custom_root(_ridge_optimality_lam_first, argnums=1)(
        lambda init, lam, X, y: ridge_dense(init, X, y, lam)
    )
    methods.append(
        Method(
            name,
            lambda: hypergrad_autograd(lambda i, X, y, lam: root(i, lam, X, y), p, p.lam),
            "TorchOpt default",
        )
    )
    return methods


def _tanh_case(d: int, solve: Any) -> Callable[[], torch.Tensor]:
    """d z*/d W (summed) of z* = tanh(W z* + x), ||W|| about 0.5: a non-symmetric ``A``."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5 / math.sqrt(d)
    x = torch.randn(d, generator=g, dtype=torch.float64)

    def cell(z: torch.Tensor, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(W @ z + x)

    def inner(z: torch.Tensor, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for _ in range(60):
            z = cell(z, W, x)
        return z

    solver = fi.fixed_point(cell, argnums=(1, 2), solve=solve)(inner)

    def run() -> torch.Tensor:
        Wr = W.clone().requires_grad_()
        z = solver(torch.zeros(d, dtype=torch.float64), Wr, x)
        (grad,) = torch.autograd.grad(z.sum(), Wr)
        return grad

    return run


def section_auto(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``auto``: the default solve against TorchOpt's, and the dense threshold."""
    s = QUICK if quick else FULL
    sec = Section("auto", "The default linear solver (fi.Auto): ridge rows and its threshold")
    sec.markdown.append(
        "Ridge hypergradient d = 100 (n = 200 samples, per-feature penalties, inner "
        "`torch.linalg.solve`, outer loss and backward per call), float64, each row a "
        "different backward solve, all timed interleaved in one series. `error` = max abs "
        "difference to the float64 closed form. `TorchOpt default / this` = TorchOpt's "
        "default row's median over this row's."
    )
    p = Ridge.make(100, device=device)
    ref = ridge_closed_form(p, p.lam)
    methods = _fi_default_rows(p, to)
    for m in methods:
        probe(m, functools.partial(max_abs_diff, reference=ref))
    run_methods(methods, s.budget_s, s.min_repeats, s.max_repeats)
    peer = methods[-1].timing
    rows = []
    for m in methods:
        ratio = f"**{peer.median / m.timing.median:.2f}**" if peer and m.timing else "-"
        rows.append([m.name, m.time_cell(), str(m.ops or "-"), ratio, _sci(m.error), m.note])
        sec.results.append(m.result("d = 100"))
    header = ["method", "time ms", "aten ops", "TorchOpt default / this", "error", "note"]
    sec.markdown.append(table(header, rows))
    progress("auto: ridge d = 100")

    sizes = (100, 500) if quick else (100, 300, 500, 700, 1000)
    sec.markdown.append(
        "Where the dense threshold comes from (`fi.Auto`'s `max_dense`, default 500): time "
        "per hypergradient (fwd + bwd) with a dense factorization against a Krylov backward "
        "solve, interleaved per size. Ridge (SPD, inner `torch.linalg.solve`): `fi.Cholesky`, "
        "`fi.LU`, `fi.CG`, `fi.GMRES`; a tanh fixed point (non-symmetric, d z*/d W): "
        "`fi.LU` against `fi.GMRES`. Dense pays the materialization (one vmapped product "
        "over the identity) and an O(n^3) factorization; Krylov pays one dispatched product "
        "plus its bookkeeping per iteration."
    )
    crossover: list[list[str]] = []
    for d in sizes:
        r = Ridge.make(d, device=device)
        ridge_rows = []
        for label, solve in (
            ("Cholesky", fi.Cholesky()),
            ("LU", fi.LU()),
            ("CG", fi.CG()),
            ("GMRES", fi.GMRES()),
        ):
            solver = fi.implicit_root(ridge_optimality, argnums=3, solve=solve)(ridge_dense)
            ridge_rows.append(
                Method(label, functools.partial(hypergrad_autograd, solver, r, r.lam))
            )
        tanh_rows = [
            Method(k, _tanh_case(d, v)) for k, v in (("LU", fi.LU()), ("GMRES", fi.GMRES()))
        ]
        for group in (ridge_rows, tanh_rows):
            for m in group:
                probe(m, ops=False)
            run_methods(group, s.budget_s, 3, s.max_repeats)
        cells = [m.time_cell() for m in (*ridge_rows, *tanh_rows)]
        crossover.append([str(d), *cells])
        progress(f"auto: threshold d = {d}")
    header = [
        "n",
        "ridge Cholesky",
        "ridge LU",
        "ridge CG",
        "ridge GMRES",
        "tanh LU",
        "tanh GMRES",
    ]
    sec.markdown.append(table(header, crossover))
    return sec
