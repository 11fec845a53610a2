"""Library overhead per call (section ``overhead`` of ``run.py``).

On a trivial root ``x* = a`` (d = 4, so the backward CG takes one iteration) the forward and
backward pass of a decorated solver is compared with the same computation written by hand
with ``torch.func``: the paired per-repeat difference is what the library adds to a call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from _measure import count_ops
from _report import NOT_INSTALLED, Section, progress, table
from _timing import Timing, samples_interleaved

import funcimplicit as fi

__all__ = ["section_overhead"]


def _trivial_optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x - a  # A = I: every linear solver stops after one iteration


def _outer(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum()


def section_overhead(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``overhead``: microseconds a decorated solver adds to a call."""
    repeats = 100 if quick else 300
    d = 4
    dt = torch.float64
    a0 = torch.linspace(1.0, 2.0, d, dtype=dt, device=device)
    init = torch.zeros(d, dtype=dt, device=device)
    solve = fi.CG()

    @fi.implicit_root(_trivial_optimality, solve=solve)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()  # the root, returned directly

    def decorated_backward() -> torch.Tensor:
        a = a0.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_outer(solver(init, a)), a)
        return g

    decorated_func = torch.func.grad(lambda a: _outer(solver(init, a)))

    def by_hand() -> torch.Tensor:
        # the same computation written out: solve, dL/dx, A^T u = v by the same fi.CG, -B^T u
        a = a0
        x = a.clone()
        v = torch.func.grad(_outer)(x)
        pull_x = torch.func.vjp(lambda th: _trivial_optimality(th, a), x)[1]
        u = solve(lambda w: pull_x(w)[0], v)
        pull_a = torch.func.vjp(lambda aa: _trivial_optimality(x, aa), a)[1]
        out: torch.Tensor = pull_a(-u)[0]
        return out

    def plain() -> torch.Tensor:
        # the floor: the hypergradient of this problem with plain torch ops (A = B = I)
        return 2 * a0.clone()

    fns: list[tuple[str, Callable[[], Any]]] = [
        ("by hand (torch.func + fi.CG call)", by_hand),
        ("funcimplicit decorated, autograd.grad", decorated_backward),
        ("funcimplicit decorated, torch.func.grad", lambda: decorated_func(a0)),
        ("plain ops, no solver (floor)", plain),
    ]
    if to is not None:
        to_solver = to.diff.implicit.custom_root(
            _trivial_optimality, argnums=1, solve=to.linear_solve.solve_cg()
        )(lambda init, a: a.clone())

        def torchopt_backward() -> torch.Tensor:
            a = a0.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(_outer(to_solver(init, a)), a)
            return g

        fns.append(("TorchOpt custom_root, autograd.grad", torchopt_backward))
    for name, fn in fns:
        err = float((fn() - 2 * a0).abs().max())
        if err > 1e-12:
            raise RuntimeError(f"{name}: wrong hypergradient (error {err:.1e})")
    ops = {name: count_ops(fn) for name, fn in fns}
    samples = samples_interleaved([fn for _, fn in fns], repeats=repeats, warmup=20)
    hand = samples[0]
    rows = []
    for (name, _), x in zip(fns, samples, strict=True):
        t = Timing.of(x)
        diff = Timing.of([a - b for a, b in zip(x, hand, strict=True)])
        rows.append(
            [
                name,
                t.show("us"),
                "-" if x is hand else diff.show("us"),
                f"{t.median / Timing.of(hand).median:.2f}",
                str(ops[name]),
            ]
        )
    if to is None:
        rows.append(["TorchOpt custom_root, autograd.grad", NOT_INSTALLED, "-", "-", "-"])
    sec = Section("overhead", f"Library overhead per call (trivial root x* = a, d = {d}, float64)")
    sec.markdown.append(
        "Forward + backward of a decorated solver that returns the root directly (T(x, a) = "
        "x - a, so the backward CG takes one iteration), against the same computation by hand "
        "with torch.func (solve, dL/dx, fi.CG on A^T u = v with a vjp, -B^T u). Overhead = "
        f"per-repeat difference to the by-hand call, {repeats} interleaved repeats."
    )
    header = ["method", "time µs", "overhead vs by hand µs", "time / by hand", "aten ops"]
    sec.markdown.append(table(header, rows))
    progress("overhead")
    return sec
