"""Implicit hypergradients of ridge and logistic regression against closed forms, unrolled
autograd and TorchOpt (sections ``ridge`` and ``logistic`` of ``run.py``).

1. Ridge regression with per-feature penalties ``lam`` (d = 100, 1000; n = 2d): time per
   hypergradient (inner solve + outer loss + backward) for the closed form, autograd through
   ``torch.linalg.solve``, funcimplicit (``implicit_root`` + ``fi.CG`` backward) and TorchOpt
   (``custom_root`` + ``solve_cg``), with the max abs difference to the closed form. Then
   per-task hypergradients for 8 tasks: ``vmap`` against a Python loop.
2. L2-regularized logistic regression (d = 50, n = 200) solved by K = 10, 100, 1000 steps of
   gradient descent: implicit (funcimplicit, TorchOpt) against unrolled autograd, in time and
   in bytes saved for backward (and peak memory on CUDA).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _measure import (
    CountingMatvec,
    Method,
    fi_backward_iterations,
    max_abs_diff,
    peak_cuda_bytes,
    probe,
    run_methods,
    saved_bytes,
)
from _report import NOT_INSTALLED, Plot, Section, progress, table

import funcimplicit as fi

__all__ = [
    "Ridge",
    "ridge_closed_form",
    "ridge_dense",
    "ridge_optimality",
    "ridge_outer",
    "section_logistic",
    "section_ridge",
]


@dataclass(frozen=True)
class Settings:
    budget_s: float  # about how long each interleaved series runs
    min_repeats: int
    max_repeats: int


FULL = Settings(6.0, 5, 60)
QUICK = Settings(1.0, 3, 15)


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _mb(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:.3f}"


# ----------------------------------------------------------------------------------------------
# 1. Ridge regression with per-feature penalties


@dataclass
class Ridge:
    """A ridge problem: training data, validation data and per-feature penalties."""

    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    lam: torch.Tensor

    @classmethod
    def make(cls, d: int, seed: int = 0, device: str = "cpu") -> Ridge:
        """n = 2d samples of a noisy linear model, in float64 on ``device``."""
        g = torch.Generator().manual_seed(seed)
        dt = torch.float64
        n = 2 * d
        w = torch.randn(d, generator=g, dtype=dt)
        X = torch.randn(n, d, generator=g, dtype=dt) / math.sqrt(n)
        Xv = torch.randn(n, d, generator=g, dtype=dt) / math.sqrt(n)
        y = X @ w + 0.1 * torch.randn(n, generator=g, dtype=dt)
        yv = Xv @ w + 0.1 * torch.randn(n, generator=g, dtype=dt)
        lam = 0.05 + 0.2 * torch.rand(d, generator=g, dtype=dt)  # per-feature penalties
        return cls(*(t.to(device) for t in (X, y, Xv, yv, lam)))


# theta* = argmin 0.5 ||X theta - y||^2 + 0.5 sum_i lam_i theta_i^2;  outer: 0.5 ||Xv theta - yv||^2
def ridge_optimality(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """The gradient of the inner ridge objective in ``theta``."""
    return X.T @ (X @ theta - y) + lam * theta


def ridge_outer(theta: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    """The validation loss ``0.5 ||Xv theta - yv||^2``."""
    return 0.5 * (Xv @ theta - yv).pow(2).sum()


def ridge_dense(
    init: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """The inner solution by a dense solve (``init`` unused)."""
    out: torch.Tensor = torch.linalg.solve(X.T @ X + torch.diag(lam), X.T @ y)
    return out


def ridge_closed_form(p: Ridge, lam: torch.Tensor) -> torch.Tensor:
    """d outer / d lam = -(A^{-1} g) * theta*, A = X^T X + diag(lam), g = Xv^T (Xv theta - yv)."""
    chol = torch.linalg.cholesky(p.X.T @ p.X + torch.diag(lam))
    theta = torch.cholesky_solve((p.X.T @ p.y)[:, None], chol)[:, 0]
    g = p.Xv.T @ (p.Xv @ theta - p.yv)
    u = torch.cholesky_solve(g[:, None], chol)[:, 0]
    return -u * theta


RIDGE_RTOL = 1e-10  # both libraries' CG, inner and backward: ||r|| <= 1e-10 ||b||


def fi_ridge_solvers(backward: Any) -> dict[str, Callable[..., torch.Tensor]]:
    """funcimplicit solvers of the ridge problem, inner dense / inner CG."""
    dense = fi.implicit_root(ridge_optimality, argnums=3, solve=backward)(ridge_dense)

    def cg_inner(
        init: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        return fi.CG(rtol=RIDGE_RTOL)(lambda v: X.T @ (X @ v) + lam * v, X.T @ y, init)

    cg = fi.implicit_root(ridge_optimality, argnums=3, solve=backward)(cg_inner)
    return {"dense": dense, "cg": cg}


def _ridge_optimality_lam_first(
    theta: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return ridge_optimality(theta, X, y, lam)


def torchopt_ridge_solvers(to: Any, solve: Any) -> dict[str, Callable[..., torch.Tensor]]:
    """TorchOpt solvers of the same problem (its own CG for the CG inner solve).

    TorchOpt 0.7.3 needs the differentiated arguments first (``argnums`` a prefix 1..k; the
    natural order fails, which the table records), so its solvers take ``(init, lam, X, y)``;
    the returned callables take ``(init, X, y, lam)`` like funcimplicit's.
    """

    def dense(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return ridge_dense(init, X, y, lam)

    def cg_inner(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = to.linalg.cg(
            lambda v: X.T @ (X @ v) + lam * v, X.T @ y, init, rtol=RIDGE_RTOL
        )
        return out

    root = to.diff.implicit.custom_root
    d = root(_ridge_optimality_lam_first, argnums=1, solve=solve)(dense)
    c = root(_ridge_optimality_lam_first, argnums=1, solve=solve)(cg_inner)
    return {
        "dense": lambda init, X, y, lam: d(init, lam, X, y),
        "cg": lambda init, X, y, lam: c(init, lam, X, y),
    }


def hypergrad_autograd(
    solver: Callable[..., torch.Tensor], p: Ridge, lam: torch.Tensor
) -> torch.Tensor:
    """d outer / d lam through ``solver`` by ``torch.autograd.grad``."""
    lam = lam.detach().requires_grad_(True)
    theta = solver(torch.zeros_like(lam), p.X, p.y, lam)
    (g,) = torch.autograd.grad(ridge_outer(theta, p.Xv, p.yv), lam)
    return g


def hypergrad_func(
    solver: Callable[..., torch.Tensor], p: Ridge, lam: torch.Tensor
) -> torch.Tensor:
    """d outer / d lam through ``solver`` by ``torch.func.grad``."""

    def meta(pen: torch.Tensor) -> torch.Tensor:
        return ridge_outer(solver(torch.zeros_like(pen), p.X, p.y, pen), p.Xv, p.yv)

    out: torch.Tensor = torch.func.grad(meta)(lam)
    return out


def _through_linalg_solve(p: Ridge, lam: torch.Tensor) -> torch.Tensor:
    lam = lam.detach().requires_grad_(True)
    theta = torch.linalg.solve(p.X.T @ p.X + torch.diag(lam), p.X.T @ p.y)
    (g,) = torch.autograd.grad(ridge_outer(theta, p.Xv, p.yv), lam)
    return g


def _ridge_methods(p: Ridge, to: Any | None, first: bool) -> list[Method]:
    """The rows of one size: [closed, linalg, fi, fi func, fi CG, TorchOpt x2 (+ natural)]."""
    fis = fi_ridge_solvers(fi.CG(rtol=RIDGE_RTOL))
    methods = [
        Method("closed form (Cholesky, by hand)", lambda: ridge_closed_form(p, p.lam), "closed"),
        Method(
            "unrolled: autograd through torch.linalg.solve",
            lambda: _through_linalg_solve(p, p.lam),
            "unrolled",
            role="unrolled",
        ),
        Method(
            "funcimplicit: inner linalg.solve, bwd fi.CG",
            lambda: hypergrad_autograd(fis["dense"], p, p.lam),
            "funcimplicit",
            role="fi",
        ),
        Method(
            "funcimplicit: the same, torch.func.grad",
            lambda: hypergrad_func(fis["dense"], p, p.lam),
            "funcimplicit (func.grad)",
        ),
        Method(
            "funcimplicit: inner fi.CG, bwd fi.CG",
            lambda: hypergrad_autograd(fis["cg"], p, p.lam),
            "funcimplicit (inner CG)",
        ),
    ]
    names = ("TorchOpt: inner linalg.solve, bwd solve_cg", "TorchOpt: inner CG, bwd solve_cg")
    if to is None:
        methods += [Method(names[0], None, "TorchOpt", "TorchOpt", NOT_INSTALLED)]
        methods += [Method(names[1], None, "TorchOpt (inner CG)", note=NOT_INSTALLED)]
        return methods
    tos = torchopt_ridge_solvers(to, to.linear_solve.solve_cg(rtol=RIDGE_RTOL))
    methods += [
        Method(
            names[0],
            lambda: hypergrad_autograd(tos["dense"], p, p.lam),
            "TorchOpt",
            role="TorchOpt",
        ),
        Method(names[1], lambda: hypergrad_autograd(tos["cg"], p, p.lam), "TorchOpt (inner CG)"),
    ]
    if first:  # TorchOpt with funcimplicit's argument order (init, X, y, lam), argnums=3
        natural = to.diff.implicit.custom_root(
            ridge_optimality, argnums=3, solve=to.linear_solve.solve_cg(rtol=RIDGE_RTOL)
        )(ridge_dense)
        methods.append(
            Method(
                "TorchOpt: fi's argument order (init, X, y, lam), argnums=3",
                lambda: hypergrad_autograd(natural, p, p.lam),
                "TorchOpt (natural order)",
            )
        )
    return methods


def fi_compiled_ridge(p: Ridge, maxiter: int) -> Callable[[], torch.Tensor]:
    """``fi.hypergradient`` of the ridge problem (inner ``torch.linalg.solve``), compiled whole
    by inductor with ``fullgraph=True``. Its backward CG runs a static ``maxiter`` iterations:
    the eager row's iteration count, so both do the same work to the same accuracy."""
    solve = fi.CG(maxiter=maxiter, on_failure="ignore")  # no host check under compile

    def outer(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> Any:
        return ridge_outer(theta, p.Xv, p.yv)

    def hyper(X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        theta = ridge_dense(lam, X, y, lam)
        out = fi.hypergradient(outer, ridge_optimality, theta, X, y, lam, argnums=3, solve=solve)
        grad: torch.Tensor = out.grad
        return grad

    compiled = torch.compile(hyper, fullgraph=True, dynamic=False)
    return lambda: compiled(p.X, p.y, p.lam)


def _fi_ridge_hypergrad(backward: Any, p: Ridge, kind: str) -> torch.Tensor:
    return hypergrad_autograd(fi_ridge_solvers(backward)[kind], p, p.lam)


def _ridge_iterations(methods: list[Method], p: Ridge, to: Any | None) -> None:
    """Backward iterations (fi) or matvecs (TorchOpt) of one call each, untimed."""
    backward = fi.CG(rtol=RIDGE_RTOL)
    for k, kind in ((2, "dense"), (3, "dense"), (4, "cg")):
        if methods[k].fn is not None:
            run = functools.partial(_fi_ridge_hypergrad, p=p, kind=kind)
            methods[k].iters = fi_backward_iterations(run, backward)
    if to is None:
        return
    counted = CountingMatvec(to.linear_solve.solve_cg(rtol=RIDGE_RTOL))
    tos = torchopt_ridge_solvers(to, counted)
    for k, kind in ((5, "dense"), (6, "cg")):
        if methods[k].fn is not None:
            counted.calls = 0
            hypergrad_autograd(tos[kind], p, p.lam)
            methods[k].iters = str(counted.calls)


def section_ridge(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``ridge``: per-feature ridge penalties, d = 100 and 1000, then 8 tasks."""
    s = QUICK if quick else FULL
    sec = Section("ridge", "Ridge regression hypergradient (per-feature penalties), float64")
    sec.markdown.append(
        "theta* = argmin 0.5||X theta - y||^2 + 0.5 sum lam_i theta_i^2 (n = 2d), outer loss "
        "0.5||Xv theta* - yv||^2, hypergradient d outer/d lam (inner solve, outer loss and "
        f"backward per call). All CG solves (inner and backward, both libraries): rtol "
        f"{RIDGE_RTOL:g}. `error` = max abs difference to the closed form -(A^-1 g) * theta* "
        "(Cholesky); `aten ops` = aten operations one call dispatches (torch.profiler, nested "
        "included: a per-op overhead measure that does not depend on machine load); "
        "`bwd iters` = iterations (fi) or matvecs (TorchOpt) of the backward solve. "
        "`TorchOpt / fi` = TorchOpt's time over funcimplicit's with the same inner solver. "
        "TorchOpt 0.7.3 maps `argnums` wrongly unless the differentiated arguments come first "
        "(its row with funcimplicit's argument order fails), so its timed rows take "
        "(init, lam, X, y), argnums=1. The compiled row (full runs only) is `fi.hypergradient` "
        "under `torch.compile(fullgraph=True)` (inductor), its backward CG fixed at the eager "
        "row's iteration count."
    )
    rows: list[list[str]] = []
    sizes = (100, 1000)
    for d in sizes:
        p = Ridge.make(d, device=device)
        ref = ridge_closed_form(p, p.lam)
        methods = _ridge_methods(p, to, first=d == sizes[0])
        _ridge_iterations(methods, p, to)
        if not quick:  # --quick compiles nothing; the eager row's iterations fix the trip count
            iters = int(methods[2].iters) if methods[2].iters.isdigit() else 50
            methods.append(
                Method(
                    f"funcimplicit compiled: fi.hypergradient, bwd fi.CG(maxiter={iters})",
                    fi_compiled_ridge(p, iters),
                    "funcimplicit compiled",
                    role="fi compiled",
                )
            )
        for m in methods:
            start = time.perf_counter()
            probe(m, functools.partial(max_abs_diff, reference=ref))
            if m.role == "fi compiled" and m.fn is not None:
                compile_note = f"first call (compile) {time.perf_counter() - start:.0f} s"
                m.note = compile_note + ("; " + m.note if m.note else "")
        run_methods(methods, s.budget_s, s.min_repeats, s.max_repeats)
        pairs = {5: 2, 6: 4}
        for k, m in enumerate(methods):
            other = methods[pairs[k]].timing if k in pairs else None
            ratio = "-"
            if m.timing and other:
                ratio = f"**{m.timing.median / other.median:.2f}**"
            torchopt = methods[5].timing if len(methods) > 5 else None
            if m.role == "fi compiled" and m.timing and torchopt:  # TorchOpt over compiled fi
                ratio = f"**{torchopt.median / m.timing.median:.2f}**"
            rows.append(
                [
                    str(d),
                    m.name,
                    m.time_cell(),
                    m.iters,
                    str(m.ops or "-"),
                    ratio,
                    _sci(m.error),
                    m.note if m.timing else "",
                ]
            )
            sec.results.append(m.result(f"d = {d}"))
        progress(f"ridge d={d}")
    header = ["d", "method", "time ms", "bwd iters", "aten ops", "TorchOpt / fi"]
    sec.markdown.append(table([*header, "error vs closed form", "note"], rows))
    sec.plots.append(
        Plot(
            "ridge",
            "Ridge hypergradient: time per call",
            tuple(f"d = {d}" for d in sizes),
            ("closed", "unrolled", "funcimplicit", "funcimplicit compiled", "TorchOpt"),
        )
    )
    _ridge_tasks(sec, s, device, to)
    return sec


def _ridge_tasks(sec: Section, s: Settings, device: str, to: Any | None) -> None:
    """Per-task ridge hypergradients, 8 tasks with their own ``lam``: vmap vs a Python loop."""
    d, tasks = 100, 8
    p = Ridge.make(d, device=device)
    g = torch.Generator().manual_seed(5)
    lams = (0.05 + 0.2 * torch.rand(tasks, d, generator=g, dtype=torch.float64)).to(device)
    ref = torch.stack([ridge_closed_form(p, pen) for pen in lams.unbind(0)])
    fis = fi_ridge_solvers(fi.CG(rtol=RIDGE_RTOL))["dense"]

    def fi_meta(pen: torch.Tensor) -> torch.Tensor:
        return ridge_outer(fis(torch.zeros_like(pen), p.X, p.y, pen), p.Xv, p.yv)

    fi_vmap = torch.func.vmap(torch.func.grad(fi_meta))
    closed_vmap = torch.func.vmap(lambda pen: ridge_closed_form(p, pen))
    methods = [
        Method("closed form, vmap", lambda: closed_vmap(lams)),
        Method("funcimplicit, vmap(grad)", lambda: fi_vmap(lams)),
        Method(
            "funcimplicit, loop (autograd.grad)",
            lambda: torch.stack([hypergrad_autograd(fis, p, pen) for pen in lams.unbind(0)]),
        ),
    ]
    if to is not None:
        tos = torchopt_ridge_solvers(to, to.linear_solve.solve_cg(rtol=RIDGE_RTOL))["dense"]

        def to_meta(pen: torch.Tensor) -> torch.Tensor:
            return ridge_outer(tos(torch.zeros_like(pen), p.X, p.y, pen), p.Xv, p.yv)

        to_vmap = torch.func.vmap(torch.func.grad(to_meta))
        methods += [
            Method("TorchOpt, vmap(grad)", lambda: to_vmap(lams)),
            Method(
                "TorchOpt, loop (autograd.grad)",
                lambda: torch.stack([hypergrad_autograd(tos, p, pen) for pen in lams.unbind(0)]),
            ),
        ]
    else:
        methods += [
            Method("TorchOpt, vmap(grad)", None, note=NOT_INSTALLED),
            Method("TorchOpt, loop (autograd.grad)", None, note=NOT_INSTALLED),
        ]
    for m in methods:
        probe(m, lambda out: max_abs_diff(out, ref))
    run_methods(methods, s.budget_s, s.min_repeats, s.max_repeats)
    base = methods[1].timing
    rows = [
        [
            m.name,
            m.time_cell(),
            f"{m.timing.median / base.median:.2f}" if (m.timing and base) else "-",
            str(m.ops or "-"),
            _sci(m.error),
        ]
        for m in methods
    ]
    sec.markdown.append(
        f"**Per-task hypergradients, {tasks} tasks (one lam each), d = {d}.** `vmap` = "
        "`torch.func.vmap(torch.func.grad(meta_loss))(lams)`; loop = a Python loop of "
        "single-task hypergradients. Inner solve torch.linalg.solve, backward CG."
    )
    header = ["method", "time ms (all tasks)", "time / fi vmap", "aten ops"]
    sec.markdown.append(table([*header, "error vs closed form"], rows))
    progress("ridge tasks")


# ----------------------------------------------------------------------------------------------
# 2. L2 logistic regression: implicit vs unrolled in the number of inner steps


@dataclass
class Logistic:
    """An L2-regularized logistic regression problem and its gradient-descent step 1/L."""

    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    lam: torch.Tensor
    step: float

    @classmethod
    def make(cls, d: int = 50, n: int = 200, seed: int = 1, device: str = "cpu") -> Logistic:
        """Labels drawn from a logistic model, in float64 on ``device``."""
        g = torch.Generator().manual_seed(seed)
        dt = torch.float64
        w = torch.randn(d, generator=g, dtype=dt)
        X = torch.randn(n, d, generator=g, dtype=dt)
        Xv = torch.randn(n, d, generator=g, dtype=dt)
        y = (torch.rand(n, generator=g, dtype=dt) < torch.sigmoid(X @ w)).to(dt)
        yv = (torch.rand(n, generator=g, dtype=dt) < torch.sigmoid(Xv @ w)).to(dt)
        lam = 0.05 + 0.1 * torch.rand(d, generator=g, dtype=dt)
        lipschitz = float(torch.linalg.matrix_norm(X, 2) ** 2 / (4 * n) + lam.max())
        X, y, Xv, yv, lam = (t.to(device) for t in (X, y, Xv, yv, lam))
        return cls(X, y, Xv, yv, lam, 1.0 / lipschitz)


def logistic_optimality(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """Gradient of mean BCE(X theta, y) + 0.5 sum lam_i theta_i^2."""
    return X.T @ (torch.sigmoid(X @ theta) - y) / X.shape[0] + lam * theta


def _logistic_optimality_lam_first(
    theta: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return logistic_optimality(theta, X, y, lam)


def logistic_outer(theta: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    """The validation loss: mean BCE."""
    return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ theta, yv)


def logistic_exact(p: Logistic) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta*, hypergradient) at the exact optimum: Newton to machine precision, dense solves."""
    theta = torch.zeros_like(p.lam)
    n = p.X.shape[0]
    for _ in range(50):
        s = torch.sigmoid(p.X @ theta)
        hess = p.X.T @ (p.X * (s * (1 - s))[:, None]) / n + torch.diag(p.lam)
        theta = theta - torch.linalg.solve(hess, logistic_optimality(theta, p.X, p.y, p.lam))
    s = torch.sigmoid(p.X @ theta)
    hess = p.X.T @ (p.X * (s * (1 - s))[:, None]) / n + torch.diag(p.lam)
    gv = p.Xv.T @ (torch.sigmoid(p.Xv @ theta) - p.yv) / p.Xv.shape[0]
    return theta, -torch.linalg.solve(hess, gv) * theta


def section_logistic(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``logistic``: K = 10, 100, 1000 inner steps, implicit against unrolled."""
    s = QUICK if quick else FULL
    p = Logistic.make(device=device)
    d, n = p.X.shape[1], p.X.shape[0]
    cuda = device == "cuda"
    sec = Section(
        "logistic",
        f"L2 logistic regression hypergradient vs inner steps K (d = {d}, n = {n}), float64",
    )
    sec.markdown.append(
        "Inner problem: K steps of gradient descent (step 1/L) on mean BCE + 0.5 sum lam_i "
        "theta_i^2; hypergradient of the validation BCE in lam. Implicit: the K steps run "
        "without a graph, then one backward CG (rtol 1e-10) on the Hessian at theta_K. "
        "Unrolled: autograd through the K steps (plain PyTorch). `saved MB` = the largest "
        "total of storages saved for backward by the forward pass, each counted once: what "
        "waits in memory for the backward pass"
        + (
            "; `peak MB` = peak CUDA memory allocated during one call"
            if cuda
            else " (peak allocator statistics need CUDA)"
        )
        + ". `error` = max abs difference to the exact hypergradient at the true optimum "
        "(Newton + dense solve); `||theta_K - theta*||` shows how far K steps are from it. "
        "`time / fi` = time over funcimplicit's at the same K."
    )
    exact = logistic_exact(p)
    rows = []
    steps = (10, 100, 1000)
    for K in steps:
        methods, dist = _logistic_methods(p, K, exact, s, to, cuda)
        base = methods[0].timing
        for m in methods:
            rows.append(
                [
                    str(K),
                    m.name,
                    m.time_cell(),
                    f"{m.timing.median / base.median:.2f}" if m.timing and base else "-",
                    _mb(m.saved),
                    *([_mb(m.peak)] if cuda else []),
                    str(m.ops or "-"),
                    _sci(m.error),
                    _sci(dist),
                    m.iters,
                ]
            )
            sec.results.append(m.result(f"K = {K}"))
        progress(f"logistic K={K}")
    header = ["K", "method", "time ms", "time / fi", "saved MB", *(["peak MB"] if cuda else [])]
    header += ["aten ops", "error vs exact", "||theta_K - theta*||", "bwd iters"]
    sec.markdown.append(table(header, rows))
    sec.plots.append(
        Plot(
            "logistic",
            "Logistic hypergradient vs inner steps K",
            tuple(f"K = {K}" for K in steps),
            ("funcimplicit", "unrolled", "TorchOpt"),
            kind="memory",
        )
    )
    return sec


def _gradient_descent(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, steps: int, lr: float
) -> torch.Tensor:
    for _ in range(steps):
        theta = theta - lr * logistic_optimality(theta, X, y, lam)
    return theta


def _logistic_methods(
    p: Logistic,
    K: int,
    exact: tuple[torch.Tensor, torch.Tensor],
    s: Settings,
    to: Any | None,
    cuda: bool,
) -> tuple[list[Method], float]:
    """funcimplicit, unrolled and TorchOpt at one K, probed, measured and timed together;
    also ``||theta_K - theta*||``."""
    theta_star, ref = exact
    lr = p.step

    def gd_solver(
        init: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        return _gradient_descent(init, X, y, lam, K, lr)

    def gd_solver_lam_first(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return gd_solver(init, X, y, lam)

    def fi_decorated(backward: Any) -> Callable[..., torch.Tensor]:
        return fi.implicit_root(logistic_optimality, argnums=3, solve=backward)(gd_solver)

    def outer(solver: Callable[..., torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
        return logistic_outer(solver(torch.zeros_like(lam), p.X, p.y, lam), p.Xv, p.yv)

    def hypergrad(solver: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            lam = p.lam.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(outer(solver, lam), lam)
            return g

        return call

    backward = fi.CG(rtol=1e-10)
    solvers: dict[str, Callable[..., torch.Tensor]] = {"funcimplicit": fi_decorated(backward)}
    solvers["unrolled"] = gd_solver  # called with a lam that requires grad: recorded
    names = {
        "funcimplicit": "funcimplicit (implicit, fi.CG)",
        "unrolled": "unrolled autograd",
        "TorchOpt": "TorchOpt (custom_root, solve_cg)",
    }
    if to is not None:
        to_lam_first = to.diff.implicit.custom_root(
            _logistic_optimality_lam_first, argnums=1, solve=to.linear_solve.solve_cg(rtol=1e-10)
        )(gd_solver_lam_first)
        solvers["TorchOpt"] = lambda init, X, y, lam: to_lam_first(init, lam, X, y)
    methods = [
        Method(names[key], hypergrad(solver), key, role="fi" if key == "funcimplicit" else key)
        for key, solver in solvers.items()
    ]
    if to is None:
        methods.append(Method(names["TorchOpt"], None, "TorchOpt", "TorchOpt", NOT_INSTALLED))
    for m in methods:
        probe(m, functools.partial(max_abs_diff, reference=ref))
        if m.fn is None:
            continue
        lam = p.lam.detach().requires_grad_(True)
        m.saved = saved_bytes(functools.partial(outer, solvers[m.short], lam))
        if cuda:
            m.peak = peak_cuda_bytes(m.fn)
    methods[0].iters = fi_backward_iterations(
        lambda solver: hypergrad(fi_decorated(solver))(), backward
    )
    run_methods(methods, s.budget_s, s.min_repeats, s.max_repeats)
    theta_k = gd_solver(torch.zeros_like(p.lam), p.X, p.y, p.lam)
    return methods, float((theta_k - theta_star).norm())
