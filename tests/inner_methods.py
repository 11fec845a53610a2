"""The inner-method table every inner-method test iterates, and its reference problems.

A new inner method is one row here (plus its module, its export and its API docs entry): the
property tests of ``test_inner_table.py`` then check it on every kind of problem it declares
(``problem_kinds``) against an independent reference, under ``vmap``, through its implicit
derivatives, and for its errors; the older files take their method lists from here too.

Each problem is affine in ``x`` with a dense float64 reference: the fixed point of
``F(x) = J x + c`` (``J`` of spectral radius 1/2), the root of ``T(x) = (I - J) x - c``, the
minimum of ``0.5 x^T Q x - c^T x`` (``Q`` with eigenvalues in [0.5, 1.5]) and the
least-squares solution of ``A x - c`` (``A`` 8 x 5, ``A^T A`` with eigenvalues in [1, 1.6]);
``c`` is the parameter the tests differentiate in. Each fixed-point form ``x - T(x)`` is then
a contraction (rate at most 0.6), so every method of the table solves every problem it
declares.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

import funcimplicit as fi

F64 = torch.float64
N = 5


@dataclasses.dataclass(frozen=True)
class Row:
    """One inner method, configured to solve the reference problems of its kinds.

    Attributes:
        name: the test id.
        method: the configured method (fields chosen for the reference problems: a step size
            below 2 / Lipschitz for gradient descent, iteration caps the slowest needs).
        contractions_only: solves fixed points only of contractions (plain iteration).
    """

    name: str
    method: Any
    contractions_only: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.method.problem_kinds)

    def with_(self, **changes: Any) -> Any:
        return dataclasses.replace(self.method, **changes)


def _identity(x: torch.Tensor, *args: Any) -> torch.Tensor:
    return x


# Iteration caps: plain iteration at rate 0.6 needs ~45 iterations to 1e-10; gradient descent
# at step 0.4 contracts by at most 0.8 per step (~110).
METHODS: tuple[Row, ...] = (
    Row("FixedPointIteration", fi.FixedPointIteration(maxiter=500), contractions_only=True),
    Row(
        "FixedPointIteration_damped",
        fi.FixedPointIteration(damping=0.7, maxiter=500),
        contractions_only=True,
    ),
    Row("Anderson", fi.Anderson(maxiter=200)),
    Row("Anderson_mixing", fi.Anderson(history=3, mixing=0.5, maxiter=200)),
    Row("Broyden", fi.Broyden(memory=30, maxiter=200)),
    Row("Newton", fi.Newton()),
    Row("Newton_LU", fi.Newton(solve=fi.LU())),
    Row("GradientDescent", fi.GradientDescent(step_size=0.4, maxiter=500)),
    Row("LBFGS", fi.LBFGS()),
    Row("GaussNewton", fi.GaussNewton()),
    Row("LevenbergMarquardt", fi.LevenbergMarquardt()),
    Row("ProjectedGradient", fi.ProjectedGradient(projection=_identity, step_size=0.4)),
)

IDS = [row.name for row in METHODS]
ROWS = {row.name: row for row in METHODS}


def methods(kind: str, *, contractions: bool = True) -> dict[str, Any]:
    """``name -> method`` for the rows that solve ``kind`` (fixed points of non-contractions
    excluded with ``contractions=False``)."""
    return {
        row.name: row.method
        for row in METHODS
        if kind in row.kinds and (contractions or not row.contractions_only)
    }


#: (row, kind) pairs: every method on every kind of problem it declares
PAIRS = [(row, kind) for row in METHODS for kind in row.kinds]
PAIR_IDS = [f"{row.name}-{kind}" for row, kind in PAIRS]


# --------------------------------------------------------------------------------------------
# Reference problems


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q: torch.Tensor
    r: torch.Tensor
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=_gen(seed)))
    return q * torch.sign(torch.diagonal(r))


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of a kind, as its entry point takes it: ``solve(method, c)`` returns the
    :class:`fi.Solution`; ``reference(c)`` is the dense float64 solution; ``jacobian`` is
    ``d x* / d c`` (constant: the problems are affine)."""

    kind: str
    fn: Callable[..., Any]
    reference_matrix: torch.Tensor  # x* = M c
    c: torch.Tensor

    def solve(self, method: Any, c: torch.Tensor, **options: Any) -> Any:
        entry: Callable[..., Any] = {
            "fixed_point": fi.solve_fixed_point,
            "root": fi.solve_root,
            "minimize": fi.minimize,
            "least_squares": fi.least_squares,
        }[self.kind]  # type: ignore[assignment]
        return entry(self.fn, torch.zeros(N, dtype=F64), c, method=method, **options)

    def reference(self, c: torch.Tensor) -> torch.Tensor:
        return self.reference_matrix @ c


def problem(kind: str, seed: int = 0) -> Problem:
    """The affine reference problem of ``kind`` (see the module docstring)."""
    g = torch.randn(N, N, dtype=F64, generator=_gen(seed))
    j = 0.5 * g / torch.linalg.eigvals(g).abs().max()
    eye = torch.eye(N, dtype=F64)
    if kind in ("fixed_point", "root"):

        def fixed(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = j @ x + c
            return out

        def root(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = x - j @ x - c
            return out

        m = torch.linalg.inv(eye - j)
        c = torch.randn(N, dtype=F64, generator=_gen(seed + 1))
        return Problem(kind, fixed if kind == "fixed_point" else root, m, c)
    if kind == "minimize":
        q_mat = _orthogonal(N, seed)
        q = (q_mat * torch.linspace(0.5, 1.5, N, dtype=F64)) @ q_mat.mT
        q = (q + q.mT) / 2

        def objective(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return 0.5 * x @ (q @ x) - c @ x

        c = torch.randn(N, dtype=F64, generator=_gen(seed + 1))
        return Problem(kind, objective, torch.linalg.inv(q), c)
    if kind == "least_squares":
        m_rows = 8
        u = _orthogonal(m_rows, seed)[:, :N]
        v = _orthogonal(N, seed + 2)
        # singular values in [1, sqrt(1.6)]: A^T A has eigenvalues in [1, 1.6]
        a = (u * torch.linspace(1.0, math.sqrt(1.6), N, dtype=F64)) @ v.mT

        def residual(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return a @ x - c

        c = torch.randn(m_rows, dtype=F64, generator=_gen(seed + 1))
        return Problem(kind, residual, torch.linalg.pinv(a), c)
    raise ValueError(f"no reference problem of kind {kind!r}")
