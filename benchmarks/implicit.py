"""Implicit hypergradients: funcimplicit against closed forms, unrolled autograd and TorchOpt.

Run from the repository root:

    PYTHONPATH=. python benchmarks/implicit.py              # full run (about 2-4 minutes)
    PYTHONPATH=. python benchmarks/implicit.py --quick      # smaller run (< 40 s)
    PYTHONPATH=. python benchmarks/implicit.py --no-torchopt   # as if TorchOpt were absent

Sections (every figure is ``median [min, max]`` over repeats after warm-up; calls of the
methods compared in one table are interleaved call by call, so every ratio is a ratio of
medians measured in the same run):

1. Ridge regression with per-feature penalties ``lam`` (d = 100, 1000; n = 2d): time per
   hypergradient (inner solve + outer loss + backward) for the closed form, autograd through
   ``torch.linalg.solve``, funcimplicit (``implicit_root`` + ``fi.CG`` backward) and TorchOpt
   (``custom_root`` + ``solve_cg``), with the max abs difference to the closed form. Then
   per-task hypergradients for 8 tasks: ``vmap`` against a Python loop.
2. L2-regularized logistic regression (d = 50, n = 200) solved by K = 10, 100, 1000 steps of
   gradient descent: implicit (funcimplicit, TorchOpt) against unrolled autograd: time and
   the bytes saved for backward (measured with ``torch.autograd.graph.saved_tensors_hooks``
   around the forward pass).
3. A DEQ layer ``z = tanh(W z + U x + b)`` (batch 32, hidden 128, ||W||_2 = 0.9), forward by a
   plain fixed-point loop to tolerance: implicit backward (``fi.fixed_point`` with GMRES,
   Neumann, NormalCG; TorchOpt ``custom_root`` with its default ``solve_normal_cg``) against
   backprop through the forward iterations.
4. Library overhead per call on a trivial d = 4 problem: decorated solver forward+backward
   minus the same computation written by hand with ``torch.func`` (paired differences, µs).

TorchOpt is an optional peer: it is imported here only, and its rows read
"TorchOpt not installed" when it is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import funcimplicit as fi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Timing, samples_interleaved

NOT_INSTALLED = "TorchOpt not installed"
_START = time.perf_counter()


def progress(what: str) -> None:
    print(f"  ... {what} done ({time.perf_counter() - _START:.0f} s)", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    ridge_sizes: tuple[int, ...]
    ridge_budget_s: float  # about how long each interleaved ridge series runs
    tasks: int
    logistic_steps: tuple[int, ...]
    logistic_budget_s: float
    deq_budget_s: float
    min_repeats: int
    max_repeats: int
    overhead_repeats: int


FULL = Settings((100, 1000), 14.0, 8, (10, 100, 1000), 10.0, 12.0, 7, 100, 400)
QUICK = Settings((100, 1000), 1.0, 8, (10, 100, 1000), 0.6, 0.8, 3, 15, 100)


# ----------------------------------------------------------------------------------------------
# Shared helpers


def load_torchopt(disabled: bool) -> Any | None:
    """TorchOpt if importable (and not disabled), else None."""
    if disabled:
        return None
    try:
        import torchopt
    except ImportError:
        return None
    return torchopt


def timed_series(
    fns: Sequence[Callable[[], Any]], budget_s: float, s: Settings, warmup: int = 1
) -> list[Timing]:
    """Interleaved timings of ``fns``; repeats chosen so the series takes about ``budget_s``."""
    for _ in range(max(warmup - 1, 0)):
        for fn in fns:
            fn()
    one = 0.0
    for fn in fns:  # the last warm-up call, timed to size the series
        start = time.perf_counter()
        fn()
        one += time.perf_counter() - start
    repeats = max(s.min_repeats, min(s.max_repeats, round(budget_s / max(one, 1e-9))))
    return [Timing.of(x) for x in samples_interleaved(fns, repeats=repeats, warmup=0)]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def sci(x: float) -> str:
    return f"{x:.1e}"


def failure(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(msg) > 90:
        msg = msg[:87] + "..."
    return f"FAILED: {type(exc).__name__}" + (f" ({msg})" if msg else "")


def with_warnings(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Call ``fn`` once, returning its result and the distinct warning categories raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning)  # TorchOpt: functorch.vjp
        out = fn()
    return out, sorted({w.category.__name__ for w in caught})


def count_ops(fn: Callable[[], Any]) -> int:
    """Profiler events (aten ops, nested ones included) of one call: a load-independent cost."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


class SavedBytes:
    """Bytes of tensors saved for backward, via ``saved_tensors_hooks``.

    ``total`` sums ``numel * element_size`` over every packed tensor; ``unique`` counts each
    storage once (a weight saved by every unrolled step is one buffer in memory) and only
    while some saved reference to it is alive, ``peak_unique`` its maximum. The hooks wrap
    the forward pass only: ``torch.func`` transforms refuse to run under saved-tensor hooks,
    and both implicit backward passes use them.
    """

    def __init__(self) -> None:
        self.total = 0
        self.unique = 0
        self.peak_unique = 0
        self._live: dict[tuple[int, int], int] = {}

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, t: torch.Tensor) -> Any:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        self.total += t.numel() * t.element_size()
        count = self._live.get(key, 0)
        if count == 0:
            self.unique += key[1]
            self.peak_unique = max(self.peak_unique, self.unique)
        self._live[key] = count + 1
        return _Held(t, key, self)

    def _release(self, key: tuple[int, int]) -> None:
        count = self._live[key] - 1
        if count:
            self._live[key] = count
        else:
            del self._live[key]
            self.unique -= key[1]


class _Held:
    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, key: tuple[int, int], meter: SavedBytes) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter._release(self.key)


def _unpack(held: _Held) -> torch.Tensor:
    return held.tensor


class Counting:
    """Mixin recording the iterations of every ``run`` of a funcimplicit solver (untimed)."""

    log: list[int]

    def run(self, matvec: Any, b: Any, init: Any = None) -> Any:
        result = super().run(matvec, b, init)  # type: ignore[misc]
        Counting.log.append(int(result.iterations.max()))
        return result


Counting.log = []


def counting(solver: Any) -> Any:
    """A copy of ``solver`` whose solves append their iteration count to ``Counting.log``."""
    cls = type(f"Counting{type(solver).__name__}", (Counting, type(solver)), {})
    return cls(**{f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)})


def fi_backward_iterations(run_once: Callable[[Any], Any], solver: Any) -> str:
    """Iterations of the backward linear solve(s) of one call made with a counting solver."""
    Counting.log.clear()
    run_once(counting(solver))
    return "+".join(str(k) for k in Counting.log) or "-"


class CountingMatvec:
    """Wrap a TorchOpt ``solve(matvec, b)`` to count matvec calls of one backward pass."""

    def __init__(self, solve: Callable[..., Any]) -> None:
        self.solve, self.calls = solve, 0

    def __call__(self, matvec: Callable[[Any], Any], b: Any, **kw: Any) -> Any:
        def counted(v: Any) -> Any:
            self.calls += 1
            return matvec(v)

        return self.solve(counted, b, **kw)


# ----------------------------------------------------------------------------------------------
# 1. Ridge regression with per-feature penalties


@dataclass
class Ridge:
    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    lam: torch.Tensor

    @classmethod
    def make(cls, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Ridge:
        g = torch.Generator().manual_seed(seed)
        n = 2 * d
        w = torch.randn(d, generator=g, dtype=dtype)
        X = torch.randn(n, d, generator=g, dtype=dtype) / math.sqrt(n)
        Xv = torch.randn(n, d, generator=g, dtype=dtype) / math.sqrt(n)
        y = X @ w + 0.1 * torch.randn(n, generator=g, dtype=dtype)
        yv = Xv @ w + 0.1 * torch.randn(n, generator=g, dtype=dtype)
        lam = 0.05 + 0.2 * torch.rand(d, generator=g, dtype=dtype)  # per-feature penalties
        return cls(X, y, Xv, yv, lam)


# theta* = argmin 0.5 ||X theta - y||^2 + 0.5 sum_i lam_i theta_i^2;  outer: 0.5 ||Xv theta - yv||^2
def ridge_optimality(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    return X.T @ (X @ theta - y) + lam * theta


def ridge_outer(theta: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    return 0.5 * (Xv @ theta - yv).pow(2).sum()


def ridge_dense(
    init: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    return torch.linalg.solve(X.T @ X + torch.diag(lam), X.T @ y)


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


def ridge_optimality_lam_first(
    theta: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return ridge_optimality(theta, X, y, lam)


def torchopt_ridge_solvers(to: Any, solve: Any) -> dict[str, Callable[..., torch.Tensor]]:
    """TorchOpt solvers of the same problem (its own CG for the CG inner solve).

    TorchOpt 0.7.3 needs the differentiated arguments first (``argnums`` a prefix 1..k: see
    :func:`torchopt_natural_order`), so its solvers take ``(init, lam, X, y)``; the returned
    callables take ``(init, X, y, lam)`` like funcimplicit's.
    """

    def dense(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return ridge_dense(init, X, y, lam)

    def cg_inner(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return to.linalg.cg(lambda v: X.T @ (X @ v) + lam * v, X.T @ y, init, rtol=RIDGE_RTOL)

    root = to.diff.implicit.custom_root
    d = root(ridge_optimality_lam_first, argnums=1, solve=solve)(dense)
    c = root(ridge_optimality_lam_first, argnums=1, solve=solve)(cg_inner)
    return {
        "dense": lambda init, X, y, lam: d(init, lam, X, y),
        "cg": lambda init, X, y, lam: c(init, lam, X, y),
    }


def torchopt_natural_order(to: Any, p: Ridge) -> Method:
    """TorchOpt with funcimplicit's signature ``(init, X, y, lam)``, ``argnums=3``."""
    solver = to.diff.implicit.custom_root(
        ridge_optimality, argnums=3, solve=to.linear_solve.solve_cg(rtol=RIDGE_RTOL)
    )(ridge_dense)
    return Method(
        "TorchOpt: fi's signature (init, X, y, lam), argnums=3",
        lambda: hypergrad_autograd(solver, p, p.lam),
    )


def hypergrad_autograd(
    solver: Callable[..., torch.Tensor], p: Ridge, lam: torch.Tensor
) -> torch.Tensor:
    lam = lam.detach().requires_grad_(True)
    theta = solver(torch.zeros_like(lam), p.X, p.y, lam)
    (g,) = torch.autograd.grad(ridge_outer(theta, p.Xv, p.yv), lam)
    return g


def hypergrad_func(
    solver: Callable[..., torch.Tensor], p: Ridge, lam: torch.Tensor
) -> torch.Tensor:
    def meta(pen: torch.Tensor) -> torch.Tensor:
        return ridge_outer(solver(torch.zeros_like(pen), p.X, p.y, pen), p.Xv, p.yv)

    return torch.func.grad(meta)(lam)


def through_linalg_solve(p: Ridge, lam: torch.Tensor) -> torch.Tensor:
    lam = lam.detach().requires_grad_(True)
    theta = ridge_dense(None, p.X, p.y, lam)  # type: ignore[arg-type]
    (g,) = torch.autograd.grad(ridge_outer(theta, p.Xv, p.yv), lam)
    return g


@dataclass
class Method:
    name: str
    fn: Callable[[], Any] | None  # None: not run (note says why)
    note: str = ""
    error: float | None = None
    iters: str = "-"
    timing: Timing | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_methods(methods: list[Method], budget_s: float, s: Settings) -> None:
    runnable = [m for m in methods if m.fn is not None]
    for m, t in zip(runnable, timed_series([m.fn for m in runnable], budget_s, s), strict=True):  # type: ignore[misc]
        m.timing = t


def probe(m: Method, reference: torch.Tensor | None) -> None:
    """One untimed call: error against the reference, warnings, or the failure."""
    assert m.fn is not None
    try:
        out, warned = with_warnings(m.fn)
    except Exception as exc:
        m.note = failure(exc)
        m.fn = None
        return
    if reference is not None:
        m.error = float((out - reference).abs().max())
    m.extra["ops"] = count_ops(m.fn)
    if warned:
        m.note = (m.note + "; " if m.note else "") + "warned: " + ", ".join(warned)


def bench_ridge(s: Settings, to: Any | None) -> None:
    print("\n## 1. Ridge regression hypergradient (per-feature penalties), float64\n")
    print(
        "theta* = argmin 0.5||X theta - y||^2 + 0.5 sum lam_i theta_i^2 (n = 2d), outer loss "
        "0.5||Xv theta* - yv||^2, hypergradient d outer/d lam (forward + backward per call). "
        f"All CG solves (inner and backward, both libraries): rtol {RIDGE_RTOL:g}. "
        "`error` = max abs difference to the closed form -(A^-1 g) * theta* (Cholesky, float64); "
        "`aten ops` = aten ops one call dispatches (torch.profiler events, nested included: a "
        "measure of per-op overhead that does not depend on machine load); "
        "`bwd iters` = iterations (fi) or matvecs (TorchOpt) of the backward solve. "
        "Ratio = TorchOpt / funcimplicit for the same inner solver. TorchOpt 0.7.3 maps "
        "`argnums` wrongly unless the differentiated arguments come first (row 'fi's "
        "signature'), so its timed rows use the signature (init, lam, X, y), argnums=1.\n"
    )
    rows: list[list[str]] = []
    for d in s.ridge_sizes:
        p = Ridge.make(d)
        ref = ridge_closed_form(p, p.lam)
        backward = fi.CG(rtol=RIDGE_RTOL)
        fis = fi_ridge_solvers(backward)
        methods = [
            Method("closed form (Cholesky, by hand)", lambda p=p: ridge_closed_form(p, p.lam)),
            Method(
                "autograd through torch.linalg.solve", lambda p=p: through_linalg_solve(p, p.lam)
            ),
            Method(
                "funcimplicit: inner linalg.solve, bwd fi.CG",
                lambda p=p, f=fis["dense"]: hypergrad_autograd(f, p, p.lam),
            ),
            Method(
                "funcimplicit: inner linalg.solve, bwd fi.CG, torch.func.grad",
                lambda p=p, f=fis["dense"]: hypergrad_func(f, p, p.lam),
            ),
            Method(
                "funcimplicit: inner fi.CG, bwd fi.CG",
                lambda p=p, f=fis["cg"]: hypergrad_autograd(f, p, p.lam),
            ),
        ]
        counted_to: CountingMatvec | None = None
        if to is not None:
            counted_to = CountingMatvec(to.linear_solve.solve_cg(rtol=RIDGE_RTOL))
            tos = torchopt_ridge_solvers(to, to.linear_solve.solve_cg(rtol=RIDGE_RTOL))
            tos_counted = torchopt_ridge_solvers(to, counted_to)
            methods += [
                Method(
                    "TorchOpt: inner linalg.solve, bwd solve_cg",
                    lambda p=p, f=tos["dense"]: hypergrad_autograd(f, p, p.lam),
                ),
                Method(
                    "TorchOpt: inner torchopt CG, bwd solve_cg",
                    lambda p=p, f=tos["cg"]: hypergrad_autograd(f, p, p.lam),
                ),
            ]
        else:
            methods += [
                Method("TorchOpt: inner linalg.solve, bwd solve_cg", None, NOT_INSTALLED),
                Method("TorchOpt: inner torchopt CG, bwd solve_cg", None, NOT_INSTALLED),
            ]
        if to is not None and d == min(s.ridge_sizes):
            methods.append(torchopt_natural_order(to, p))
        for m in methods:
            if m.fn is not None:
                probe(m, ref)
        # backward iteration counts (untimed)
        methods[2].iters = fi_backward_iterations(
            lambda solver, p=p: hypergrad_autograd(fi_ridge_solvers(solver)["dense"], p, p.lam),
            backward,
        )
        methods[3].iters = methods[2].iters
        methods[4].iters = fi_backward_iterations(
            lambda solver, p=p: hypergrad_autograd(fi_ridge_solvers(solver)["cg"], p, p.lam),
            backward,
        )
        if counted_to is not None and methods[5].fn is not None and methods[6].fn is not None:
            counted_to.calls = 0
            hypergrad_autograd(tos_counted["dense"], p, p.lam)
            methods[5].iters = str(counted_to.calls)
            counted_to.calls = 0
            hypergrad_autograd(tos_counted["cg"], p, p.lam)
            methods[6].iters = str(counted_to.calls)
        run_methods(methods, s.ridge_budget_s, s)
        pairs = {5: 2, 6: 4}
        for k, m in enumerate(methods):
            ratio = "-"
            if k in pairs and m.timing and methods[pairs[k]].timing:
                ratio = f"**{m.timing.median / methods[pairs[k]].timing.median:.2f}**"  # type: ignore[union-attr]
            rows.append(
                [
                    str(d),
                    m.name,
                    m.timing.show("ms") if m.timing else m.note,
                    m.iters,
                    str(m.extra.get("ops", "-")),
                    ratio,
                    sci(m.error) if m.error is not None else "-",
                    m.note if m.timing else "",
                ]
            )
        progress(f"ridge d={d}")
    print(
        table(
            [
                "d",
                "method",
                "time ms",
                "bwd iters",
                "aten ops",
                "TorchOpt/fi",
                "error vs closed form",
                "note",
            ],
            rows,
        )
    )
    bench_ridge_tasks(s, to)


def bench_ridge_tasks(s: Settings, to: Any | None) -> None:
    d = min(s.ridge_sizes)
    tasks = s.tasks
    p = Ridge.make(d)
    g = torch.Generator().manual_seed(5)
    lams = 0.05 + 0.2 * torch.rand(tasks, d, generator=g, dtype=torch.float64)
    ref = torch.stack([ridge_closed_form(p, pen) for pen in lams.unbind(0)])
    print(f"\n### Per-task ridge hypergradients: {tasks} tasks (per-task lam), d = {d}\n")
    print(
        "`vmap` = `torch.func.vmap(torch.func.grad(meta_loss))(lams)`; loop = Python loop of "
        "single-task hypergradients. Inner solve torch.linalg.solve, backward CG (rtol 1e-10). "
        "A failure is recorded, not hidden.\n"
    )
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
            Method("TorchOpt, vmap(grad)", None, NOT_INSTALLED),
            Method("TorchOpt, loop (autograd.grad)", None, NOT_INSTALLED),
        ]
    for m in methods:
        if m.fn is not None:
            probe(m, ref)
    run_methods(methods, s.ridge_budget_s, s)
    base = methods[1].timing
    rows = []
    for m in methods:
        rows.append(
            [
                m.name,
                m.timing.show("ms") if m.timing else m.note,
                f"{m.timing.median / base.median:.2f}" if (m.timing and base) else "-",
                str(m.extra.get("ops", "-")),
                sci(m.error) if m.error is not None else "-",
                m.note if m.timing else "",
            ]
        )
    print(
        table(
            [
                "method",
                "time ms (all tasks)",
                "time / fi vmap",
                "aten ops",
                "error vs closed form",
                "note",
            ],
            rows,
        )
    )
    progress("ridge tasks")


# ----------------------------------------------------------------------------------------------
# 2. L2 logistic regression: implicit vs unrolled in the number of inner steps


@dataclass
class Logistic:
    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    lam: torch.Tensor
    step: float  # 1 / L

    @classmethod
    def make(cls, d: int = 50, n: int = 200, seed: int = 1) -> Logistic:
        g = torch.Generator().manual_seed(seed)
        dt = torch.float64
        w = torch.randn(d, generator=g, dtype=dt)
        X = torch.randn(n, d, generator=g, dtype=dt)
        Xv = torch.randn(n, d, generator=g, dtype=dt)
        y = (torch.rand(n, generator=g, dtype=dt) < torch.sigmoid(X @ w)).to(dt)
        yv = (torch.rand(n, generator=g, dtype=dt) < torch.sigmoid(Xv @ w)).to(dt)
        lam = 0.05 + 0.1 * torch.rand(d, generator=g, dtype=dt)
        lipschitz = float(torch.linalg.matrix_norm(X, 2) ** 2 / (4 * n) + lam.max())
        return cls(X, y, Xv, yv, lam, 1.0 / lipschitz)


def logistic_optimality(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """Gradient of mean BCE(X theta, y) + 0.5 sum lam_i theta_i^2."""
    return X.T @ (torch.sigmoid(X @ theta) - y) / X.shape[0] + lam * theta


def logistic_optimality_lam_first(
    theta: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return logistic_optimality(theta, X, y, lam)


def logistic_outer(theta: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ theta, yv)


def gradient_descent(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, steps: int, lr: float
) -> torch.Tensor:
    for _ in range(steps):
        theta = theta - lr * logistic_optimality(theta, X, y, lam)
    return theta


def logistic_exact(p: Logistic) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta*, hypergradient) at the exact optimum: Newton to machine precision, dense solves."""
    theta = torch.zeros(p.X.shape[1], dtype=p.X.dtype)
    n = p.X.shape[0]
    for _ in range(50):
        s = torch.sigmoid(p.X @ theta)
        hess = p.X.T @ (p.X * (s * (1 - s))[:, None]) / n + torch.diag(p.lam)
        theta = theta - torch.linalg.solve(hess, logistic_optimality(theta, p.X, p.y, p.lam))
    s = torch.sigmoid(p.X @ theta)
    hess = p.X.T @ (p.X * (s * (1 - s))[:, None]) / n + torch.diag(p.lam)
    gv = p.Xv.T @ (torch.sigmoid(p.Xv @ theta) - p.yv) / p.Xv.shape[0]
    return theta, -torch.linalg.solve(hess, gv) * theta


def bench_logistic(s: Settings, to: Any | None) -> None:
    p = Logistic.make()
    d, n = p.X.shape[1], p.X.shape[0]
    print(
        "\n## 2. L2 logistic regression hypergradient vs inner steps K "
        f"(d = {d}, n = {n}), float64\n"
    )
    print(
        "Inner problem: K steps of gradient descent (step 1/L) on mean BCE + 0.5 sum lam_i "
        "theta_i^2; hypergradient of the validation BCE in lam. Implicit: the K steps run "
        "without a graph, then one backward CG (rtol 1e-10) on the Hessian at theta_K. "
        "Unrolled: autograd through the K steps. `saved MB` = storages saved for backward "
        "by the forward pass, each counted once (the footprint that waits for backward); "
        "`packed MB` = sum of numel*element_size over every packed tensor (an input saved "
        "by every step counts every time). `error` = max abs difference to the exact "
        "hypergradient at the true optimum (Newton + dense solve); `||theta_K - theta*||` "
        "shows how far K steps are from it. `time / fi` = time / funcimplicit's at the same K.\n"
    )
    exact = logistic_exact(p)
    rows = []
    for K in s.logistic_steps:
        rows += logistic_rows(p, K, exact, s, to)
        progress(f"logistic K={K}")
    header = ["K", "method", "time ms", "time / fi", "saved MB", "packed MB", "aten ops"]
    header += ["error vs exact", "||theta_K - theta*||", "bwd iters", "note"]
    print(table(header, rows))


def logistic_rows(
    p: Logistic, K: int, exact: tuple[torch.Tensor, torch.Tensor], s: Settings, to: Any | None
) -> list[list[str]]:
    """One K: funcimplicit, unrolled and TorchOpt, timed together."""
    d, lr = p.X.shape[1], p.step
    theta_star, ref = exact

    def gd_solver(
        init: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        return gradient_descent(init, X, y, lam, K, lr)

    def gd_solver_lam_first(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return gd_solver(init, X, y, lam)

    def fi_decorated(backward: Any) -> Callable[..., torch.Tensor]:
        return fi.implicit_root(logistic_optimality, argnums=3, solve=backward)(gd_solver)

    def hypergrad(solver: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            lam = p.lam.detach().requires_grad_(True)
            theta = solver(torch.zeros(d, dtype=p.X.dtype), p.X, p.y, lam)
            (g,) = torch.autograd.grad(logistic_outer(theta, p.Xv, p.yv), lam)
            return g

        return call

    backward = fi.CG(rtol=1e-10)
    solvers: dict[str, Callable[..., torch.Tensor]] = {
        "funcimplicit (implicit, fi.CG)": fi_decorated(backward),
        "unrolled autograd": gd_solver,  # called with a lam that requires grad: recorded
    }
    if to is not None:
        to_lam_first = to.diff.implicit.custom_root(
            logistic_optimality_lam_first, argnums=1, solve=to.linear_solve.solve_cg(rtol=1e-10)
        )(gd_solver_lam_first)
        solvers["TorchOpt (custom_root, solve_cg)"] = lambda init, X, y, lam: to_lam_first(
            init, lam, X, y
        )
    methods = [Method(name, hypergrad(solver)) for name, solver in solvers.items()]
    if to is None:
        methods.append(Method("TorchOpt (custom_root, solve_cg)", None, NOT_INSTALLED))
    for m in methods:
        if m.fn is None:
            continue
        probe(m, ref)
        if m.fn is None:
            continue
        meter = SavedBytes()
        lam = p.lam.detach().requires_grad_(True)
        with meter.hooks():
            theta = solvers[m.name](torch.zeros(d, dtype=p.X.dtype), p.X, p.y, lam)
            loss = logistic_outer(theta, p.Xv, p.yv)
        m.extra["saved"] = meter.peak_unique
        m.extra["packed"] = meter.total
        m.extra["dist"] = float((theta.detach() - theta_star).norm())
        torch.autograd.grad(loss, lam)
    methods[0].iters = fi_backward_iterations(
        lambda solver: hypergrad(fi_decorated(solver))(), backward
    )
    run_methods(methods, s.logistic_budget_s, s)
    base = methods[0].timing
    rows = []
    for m in methods:
        rows.append(
            [
                str(K),
                m.name,
                m.timing.show("ms") if m.timing else m.note,
                f"{m.timing.median / base.median:.2f}" if (m.timing and base) else "-",
                f"{m.extra['saved'] / 2**20:.3f}" if "saved" in m.extra else "-",
                f"{m.extra['packed'] / 2**20:.3f}" if "packed" in m.extra else "-",
                str(m.extra.get("ops", "-")),
                sci(m.error) if m.error is not None else "-",
                sci(m.extra["dist"]) if "dist" in m.extra else "-",
                m.iters,
                m.note if m.timing else "",
            ]
        )
    return rows


# ----------------------------------------------------------------------------------------------
# 3. DEQ layer


def deq_map(
    z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    return torch.tanh(z @ W.T + x @ U.T + b)


def deq_residual(
    z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    return deq_map(z, x, W, U, b) - z


DEQ_TOL = 1e-5  # forward: ||F(z) - z|| <= tol ||z||; backward solves: rtol


def deq_forward(
    z: torch.Tensor,
    x: torch.Tensor,
    W: torch.Tensor,
    U: torch.Tensor,
    b: torch.Tensor,
    tol: float = DEQ_TOL,
    maxiter: int = 500,
) -> tuple[torch.Tensor, int]:
    """Plain fixed-point iteration to tolerance (a host read per iteration, as users write it)."""
    for k in range(1, maxiter + 1):
        z_next = deq_map(z, x, W, U, b)
        done = float((z_next - z).detach().norm()) <= tol * float(z_next.detach().norm())
        z = z_next
        if done:
            return z, k
    return z, maxiter


def bench_deq(s: Settings, to: Any | None) -> None:
    batch, hidden, inputs = 32, 128, 64
    g = torch.Generator().manual_seed(2)
    dt = torch.float32
    W0 = torch.randn(hidden, hidden, generator=g, dtype=torch.float64)
    W0 = 0.9 * W0 / torch.linalg.matrix_norm(W0, 2)
    U0 = torch.randn(hidden, inputs, generator=g, dtype=torch.float64) / math.sqrt(inputs)
    b0 = 0.1 * torch.randn(hidden, generator=g, dtype=torch.float64)
    x0 = torch.randn(batch, inputs, generator=g, dtype=torch.float64)
    target0 = torch.randn(batch, hidden, generator=g, dtype=torch.float64)
    params64 = (W0, U0, b0)
    params = tuple(t.to(dt) for t in params64)
    x, target = x0.to(dt), target0.to(dt)

    def loss_fn(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (z - target).pow(2).sum() / z.shape[0]

    # Reference: float64 backprop through a forward converged to 1e-14 (no implicit library).
    ref_params = tuple(t.clone().requires_grad_(True) for t in params64)
    z_ref, ref_iters = deq_forward(
        torch.zeros(batch, hidden, dtype=torch.float64), x0, *ref_params, tol=1e-14, maxiter=2000
    )
    ref = torch.autograd.grad(loss_fn(z_ref, target0), ref_params)
    ref_scale = max(float(r.abs().max()) for r in ref)

    _, fwd_iters = deq_forward(torch.zeros(batch, hidden, dtype=dt), x, *params)
    print(
        f"\n## 3. DEQ layer z = tanh(W z + U x + b): batch {batch}, hidden {hidden}, "
        f"input {inputs}, ||W||_2 = 0.9, float32\n"
    )
    print(
        f"Forward: plain fixed-point loop until ||F(z) - z|| <= {DEQ_TOL:g} ||z|| "
        f"({fwd_iters} iterations here); loss 0.5||z* - target||^2 / batch; gradients in "
        f"(W, U, b) per call (forward + backward). Backward linear solves: rtol {DEQ_TOL:g}. "
        "Unrolled = the same loop recorded by autograd. `rel. error` = max abs difference of "
        "the gradients to a float64 reference (backprop through a forward converged to 1e-14, "
        f"{ref_iters} iterations) over max |reference|. `bwd iters` = iterations of the backward "
        "solve (fi) or matvecs (TorchOpt: each normal-CG iteration costs a JVP-like matvec "
        "and a VJP). `saved MB` as in section 2.\n"
    )

    def make_fi(solve: Any) -> Callable[..., torch.Tensor]:
        @fi.fixed_point(deq_map, argnums=(2, 3, 4), solve=solve)
        def forward(
            z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
        ) -> torch.Tensor:
            return deq_forward(z, x, W, U, b)[0]

        return forward

    def hypergrad(solver: Callable[..., torch.Tensor]) -> Callable[[], tuple[torch.Tensor, ...]]:
        def call() -> tuple[torch.Tensor, ...]:
            ps = tuple(t.detach().requires_grad_(True) for t in params)
            z = solver(torch.zeros(batch, hidden, dtype=dt), x, *ps)
            return torch.autograd.grad(loss_fn(z, target), ps)

        return call

    def unrolled_solver(
        z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        return deq_forward(z, x, W, U, b)[0]

    def forward_only() -> torch.Tensor:
        return deq_forward(torch.zeros(batch, hidden, dtype=dt), x, *params)[0]

    solvers: dict[str, Any] = {
        "GMRES": fi.GMRES(rtol=DEQ_TOL),
        "Neumann": fi.Neumann(rtol=DEQ_TOL),
        "NormalCG": fi.NormalCG(rtol=DEQ_TOL),
    }
    methods = [Method("forward loop only (no grad)", forward_only)]
    methods[0].extra["ops"] = count_ops(forward_only)
    fi_solvers = {}
    for name, solve in solvers.items():
        fi_solvers[name] = make_fi(solve)
        methods.append(Method(f"funcimplicit fixed_point, {name}", hypergrad(fi_solvers[name])))
    methods.append(Method("unrolled backprop through the loop", hypergrad(unrolled_solver)))
    counted_to = None
    if to is not None:
        counted_to = CountingMatvec(to.linear_solve.solve_normal_cg(rtol=DEQ_TOL))

        # TorchOpt needs the differentiated arguments first: (z, W, U, b, x), argnums (1, 2, 3).
        def to_forward(
            z: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor, x: torch.Tensor
        ) -> torch.Tensor:
            return deq_forward(z, x, W, U, b)[0]

        def to_residual(
            z: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor, x: torch.Tensor
        ) -> torch.Tensor:
            return deq_residual(z, x, W, U, b)

        def params_first(solver: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            return lambda z, x, W, U, b: solver(z, W, U, b, x)

        to_solver = params_first(
            to.diff.implicit.custom_root(
                to_residual, argnums=(1, 2, 3), solve=to.linear_solve.solve_normal_cg(rtol=DEQ_TOL)
            )(to_forward)
        )
        to_counted = params_first(
            to.diff.implicit.custom_root(to_residual, argnums=(1, 2, 3), solve=counted_to)(
                to_forward
            )
        )
        methods.append(
            Method("TorchOpt custom_root(F(z) - z), solve_normal_cg", hypergrad(to_solver))
        )
    else:
        methods.append(
            Method("TorchOpt custom_root(F(z) - z), solve_normal_cg", None, NOT_INSTALLED)
        )

    for m in methods[1:]:
        if m.fn is None:
            continue
        try:
            out, warned = with_warnings(m.fn)
        except Exception as exc:
            m.note, m.fn = failure(exc), None
            continue
        m.error = (
            max(float((o.double() - r).abs().max()) for o, r in zip(out, ref, strict=True))
            / ref_scale
        )
        m.extra["ops"] = count_ops(m.fn)
        if warned:
            m.note = "warned: " + ", ".join(warned)
        meter = SavedBytes()
        ps = tuple(t.detach().requires_grad_(True) for t in params)
        solver = {
            "funcimplicit fixed_point, GMRES": fi_solvers["GMRES"],
            "funcimplicit fixed_point, Neumann": fi_solvers["Neumann"],
            "funcimplicit fixed_point, NormalCG": fi_solvers["NormalCG"],
            "unrolled backprop through the loop": unrolled_solver,
        }.get(m.name)
        if solver is None and to is not None:
            solver = to_solver
        with meter.hooks():
            z = solver(torch.zeros(batch, hidden, dtype=dt), x, *ps)
            loss = loss_fn(z, target)
        torch.autograd.grad(loss, ps)
        m.extra["saved"] = meter.peak_unique
    for name, solve in solvers.items():
        m = next(mm for mm in methods if mm.name.endswith(name))
        if m.fn is not None:
            m.iters = fi_backward_iterations(lambda sv: hypergrad(make_fi(sv))(), solve)
    methods[4].iters = f"{fwd_iters} (fwd)"
    if counted_to is not None and methods[5].fn is not None:
        counted_to.calls = 0
        hypergrad(to_counted)()
        methods[5].iters = str(counted_to.calls)
    run_methods(methods, s.deq_budget_s, s)
    base = methods[1].timing
    fwd = methods[0].timing
    rows = []
    for m in methods:
        rows.append(
            [
                m.name,
                m.timing.show("ms") if m.timing else m.note,
                f"{m.timing.median / base.median:.2f}" if (m.timing and base) else "-",
                f"{(m.timing.median - fwd.median) * 1e3:.2f}"
                if (m.timing and fwd and m is not methods[0])
                else "-",
                m.iters,
                str(m.extra.get("ops", "-")),
                f"{m.extra['saved'] / 2**20:.3f}" if "saved" in m.extra else "-",
                sci(m.error) if m.error is not None else "-",
                m.note if m.timing else "",
            ]
        )
    print(
        table(
            [
                "method",
                "time ms",
                "time / fi GMRES",
                "minus forward ms",
                "bwd iters",
                "aten ops",
                "saved MB",
                "rel. error",
                "note",
            ],
            rows,
        )
    )
    progress("DEQ")


# ----------------------------------------------------------------------------------------------
# 4. Library overhead per call


def trivial_optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x - a  # A = I: every linear solver stops after one iteration


def bench_overhead(s: Settings, to: Any | None) -> None:
    d = 4
    dt = torch.float64
    a0 = torch.linspace(1.0, 2.0, d, dtype=dt)
    init = torch.zeros(d, dtype=dt)
    solve = fi.CG()

    @fi.implicit_root(trivial_optimality, solve=solve)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()  # the root, returned directly

    def outer(x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).sum()

    def decorated_backward() -> torch.Tensor:
        a = a0.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(outer(solver(init, a)), a)
        return g

    decorated_func = torch.func.grad(lambda a: outer(solver(init, a)))

    def by_hand() -> torch.Tensor:
        # the same computation written out: solve, dL/dx, A^T u = v by the same fi.CG, -B^T u
        a = a0
        x = a.clone()
        v = torch.func.grad(outer)(x)
        _, pull_x = torch.func.vjp(lambda th: trivial_optimality(th, a), x)
        u = solve(lambda w: pull_x(w)[0], v)
        _, pull_a = torch.func.vjp(lambda aa: trivial_optimality(x, aa), a)
        return pull_a(-u)[0]

    def by_hand_plain() -> torch.Tensor:
        # the floor: the hypergradient of this problem with plain torch ops (A = B = I)
        return 2 * a0.clone()

    fns: list[tuple[str, Callable[[], Any]]] = [
        ("by hand (torch.func + fi.CG call)", by_hand),
        ("funcimplicit decorated, autograd.grad", decorated_backward),
        ("funcimplicit decorated, torch.func.grad", lambda: decorated_func(a0)),
        ("plain ops, no solver (floor)", by_hand_plain),
    ]
    if to is not None:
        to_solver = to.diff.implicit.custom_root(
            trivial_optimality, argnums=1, solve=to.linear_solve.solve_cg()
        )(lambda init, a: a.clone())

        def torchopt_backward() -> torch.Tensor:
            a = a0.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(outer(to_solver(init, a)), a)
            return g

        fns.append(("TorchOpt custom_root, autograd.grad", torchopt_backward))
    for name, fn in fns:
        err = float((fn() - 2 * a0).abs().max())
        assert err < 1e-12, (name, err)
    ops = {name: count_ops(fn) for name, fn in fns}
    samples = samples_interleaved([fn for _, fn in fns], repeats=s.overhead_repeats, warmup=20)
    hand = samples[0]
    print(f"\n## 4. Library overhead per call (trivial root x* = a, d = {d}, float64)\n")
    print(
        "Forward + backward of a decorated solver that returns the root directly (T(x, a) = "
        "x - a, so the backward CG takes one iteration), against the same computation by hand "
        "with torch.func (solve, dL/dx, fi.CG on A^T u = v with a vjp, -B^T u). Overhead = "
        f"per-repeat difference to the by-hand call, {s.overhead_repeats} interleaved repeats.\n"
    )
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
    print(
        table(["method", "time µs", "overhead vs by hand µs", "time / by hand", "aten ops"], rows)
    )
    progress("overhead")


# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 40 s)")
    parser.add_argument("--no-torchopt", action="store_true", help="run as if TorchOpt were absent")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's default)"
    )
    parser.add_argument(
        "--sections", type=int, nargs="+", default=[1, 2, 3, 4], help="which sections (1-4)"
    )
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    # TorchOpt 0.7.3 calls the deprecated functorch.vjp on every backward pass.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*functorch.vjp.*")
    to = load_torchopt(args.no_torchopt)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    print(
        "# funcimplicit: implicit hypergradients vs closed form, unrolled autograd and TorchOpt\n"
    )
    print(
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(torch.get_num_threads(); default {default_threads}), "
        f"{torch.get_num_interop_threads()} interop threads, "
        f"Python {platform.python_version()}"
    )
    load = os.getloadavg()
    print(
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores); load average at start "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"
    )
    if load[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        print(
            "- **warning**: the machine is busy and torch uses several threads: intra-op "
            "threads then wait on each other and timings of small ops inflate many-fold; "
            "rerun with `--threads 1` for stable figures"
        )
    print(
        f"- funcimplicit {fi.__version__}; TorchOpt "
        + (getattr(to, "__version__", "?") if to is not None else "not installed")
    )
    print(
        "- every figure: median [min, max] over repeats after warm-up; calls compared in one "
        "table interleaved; ratios of medians from the same run"
        + (" (--quick)" if args.quick else "")
    )

    sections = {1: bench_ridge, 2: bench_logistic, 3: bench_deq, 4: bench_overhead}
    for k in args.sections:
        try:
            sections[k](s, to)
        except Exception:
            print(f"\n**section {k} FAILED:**\n```\n{traceback.format_exc()}```")
    load = os.getloadavg()
    print(
        f"\n_total wall time {time.perf_counter() - start:.0f} s; load average at end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}_"
    )


if __name__ == "__main__":
    main()
