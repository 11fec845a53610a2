"""The shared table of implicit problems used by every ``tests/test_implicit_*.py`` file.

Each problem is small and float64, and comes with an *independent* reference for its solution
map ``params -> theta*(params)``: a closed form, or classic autograd through enough unrolled
iterations that the unrolled derivatives have converged. References are differentiated only with
classic ``torch.autograd`` (``torch.autograd.functional``), never with ``torch.func``, and never
with ``torch.linalg.solve`` under ``vmap`` + forward mode (silently wrong on torch 2.13, see
FINDINGS): closed forms use ``cholesky`` + ``cholesky_solve``. Per-task references under ``vmap``
are computed in a Python loop. ``test_reference_matches_finite_differences`` (in
``test_implicit_reverse.py``) checks every reference once against central finite differences of
the (undifferentiated) solver.

A problem exposes:
  ``params(seed)``      the meta-parameters (a pytree of float64 tensors, no requires_grad);
  ``data(seed)``        the per-task data (a tuple of tensors, constants);
  ``solve(p, d)``       the implicit solution: the decorated inner solver applied to (init, *args);
  ``reference(p, d)``   the reference solution, differentiable by classic autograd in p and d;
  ``optimality``        ``T(theta, *solver_args)``, zero at the solution;
  ``solver_args(p, d)`` the solver's arguments after ``init``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import optree
import torch

import funcimplicit as fi

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=_gen(seed))


def _rand(*shape: Any, seed: int) -> torch.Tensor:
    return torch.rand(*shape, dtype=F64, generator=_gen(seed))


# --------------------------------------------------------------------------------------------
# Pytree helpers. They use optree's default namespace on purpose: in namespace "torch", importing
# torch.utils._cxx_pytree (which torch does lazily, e.g. inside gradcheck) switches dicts from
# sorted-key to insertion order for the rest of the process, which would reorder a raveled vector
# between two calls.


def leaves(tree: Any) -> list[Any]:
    return optree.tree_leaves(tree)


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest)


def ravel(tree: Any) -> torch.Tensor:
    """All leaves of ``tree`` concatenated into one vector (works under torch.func)."""
    return torch.cat([leaf.reshape(-1) for leaf in leaves(tree)])


def unraveler(like: Any) -> Callable[[torch.Tensor], Any]:
    """The inverse of :func:`ravel` for trees shaped like ``like``."""
    flat, spec = optree.tree_flatten(like)
    shapes = [leaf.shape for leaf in flat]
    sizes = [math.prod(s) for s in shapes]

    def unravel(vec: torch.Tensor) -> Any:
        parts = torch.split(vec, sizes)
        return optree.tree_unflatten(
            spec, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
        )

    return unravel


def stack_trees(trees: list[Any]) -> Any:
    """Stack trees of one structure leafwise along a new dimension 0 (a vmap batch)."""
    return tree_map(lambda *xs: torch.stack(xs), *trees)


def outer_loss(solution: Any) -> torch.Tensor:
    """A smooth, non-quadratic scalar loss of the solution (so Hessians need d2 theta*/dp2)."""
    total = torch.zeros((), dtype=F64)
    for k, leaf in enumerate(leaves(solution)):
        total = total + torch.sum(torch.sin(3.0 * leaf) + (0.5 + 0.25 * k) * leaf**2)
    return total


def max_abs(a: Any, b: Any) -> float:
    """Largest absolute difference between two trees of one structure."""
    la, sa = optree.tree_flatten(a)
    lb, sb = optree.tree_flatten(b)
    assert sa == sb, f"structures differ: {sa} vs {sb}"
    return max(
        float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(la, lb, strict=True)
    )


def assert_close(actual: Any, expected: Any, tol: float = 1e-9, what: str = "") -> None:
    """Max-abs agreement scaled by the size of ``expected`` (float64 references)."""
    actual = tree_map(lambda t: t.detach(), actual)
    expected = tree_map(lambda t: t.detach(), expected)
    scale = max(1.0, max(float(x.abs().max()) for x in leaves(expected) if x.numel()))
    err = max_abs(actual, expected)
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


# --------------------------------------------------------------------------------------------
# The problem table


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    params: Callable[[int], Any]
    data: Callable[[int], tuple[Any, ...]]
    optimality: Callable[..., Any]
    solver: Callable[..., Any]  # the decorated inner solver(init, *solver_args)
    init: Callable[[Any, tuple[Any, ...]], Any]
    solver_args: Callable[[Any, tuple[Any, ...]], tuple[Any, ...]]
    reference: Callable[[Any, tuple[Any, ...]], Any]
    linear_solve: Any  # the linear solver the decorator uses (for root_vjp / root_jvp)
    rebuild: Callable[[Any], Callable[..., Any]]  # solve -> the inner solver decorated with it

    def with_solve(self, solve: Any) -> Problem:
        """The same problem with another linear solver in the decorator."""
        return dataclasses.replace(self, solver=self.rebuild(solve), linear_solve=solve)

    def solve(self, params: Any, data: tuple[Any, ...]) -> Any:
        return self.solver(self.init(params, data), *self.solver_args(params, data))

    def __repr__(self) -> str:  # short pytest ids
        return self.name


# (1) Ridge regression with one penalty per feature --------------------------------------------
# w* = argmin 0.5 ||X w - y||^2 + 0.5 sum(lam * w^2) = (X^T X + diag(lam))^{-1} X^T y


def ridge_optimality(w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> Any:
    return X.mT @ (X @ w - y) + lam * w


def _ridge_closed_form(lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    A = X.mT @ X + torch.diag_embed(lam)
    L = torch.linalg.cholesky(A)
    return torch.cholesky_solve((X.mT @ y).unsqueeze(-1), L).squeeze(-1)


def _ridge_inner(init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> Any:
    # Any inner solver at all: here the closed form (never differentiated, inputs are detached).
    return _ridge_closed_form(lam, X, y)


def _ridge_rebuild(solve: Any) -> Callable[..., Any]:
    return fi.implicit_root(ridge_optimality, solve=solve)(_ridge_inner)


ridge_solver = _ridge_rebuild(fi.CG())


RIDGE = Problem(
    name="ridge",
    params=lambda seed: 0.5 + _rand(4, seed=seed),
    data=lambda seed: (_randn(12, 4, seed=100 + seed), _randn(12, seed=200 + seed)),
    optimality=ridge_optimality,
    solver=ridge_solver,
    init=lambda p, d: torch.zeros(4, dtype=F64),
    solver_args=lambda p, d: (p, *d),
    reference=lambda p, d: _ridge_closed_form(p, *d),
    linear_solve=fi.CG(),
    rebuild=_ridge_rebuild,
)


# (2) L2 logistic regression, solved by a black-box Newton solver ------------------------------
# T(w) = X^T (sigmoid(X w) - y) / n + lam * w


def logistic_optimality(
    w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> Any:
    return X.mT @ (torch.sigmoid(X @ w) - y) / X.shape[-2] + lam * w


def _logistic_hessian(w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(X @ w)
    return (X.mT * (s * (1 - s))) @ X / X.shape[-2] + torch.diag_embed(lam)


def _logistic_newton(
    init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> Any:
    w = init
    for _ in range(30):  # black box: torch.linalg.solve is fine here, it is never differentiated
        g = logistic_optimality(w, lam, X, y)
        w = w - torch.linalg.solve(_logistic_hessian(w, lam, X), g)
    return w


def _logistic_rebuild(solve: Any) -> Callable[..., Any]:
    # argnums=1: only lam gets derivatives; X and y are constants of the decorated solver.
    return fi.implicit_root(logistic_optimality, argnums=1, solve=solve)(_logistic_newton)


logistic_newton = _logistic_rebuild(fi.CG())


def logistic_unrolled(lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """30 differentiable Newton steps from 0 (Cholesky, not linalg.solve): at convergence the
    unrolled first and second derivatives equal the implicit ones (quadratic convergence)."""
    w = torch.zeros(X.shape[-1], dtype=F64)
    for _ in range(30):
        g = logistic_optimality(w, lam, X, y)
        L = torch.linalg.cholesky(_logistic_hessian(w, lam, X))
        w = w - torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    return w


def _logistic_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    X = _randn(20, 3, seed=300 + seed)
    w_true = _randn(3, seed=400 + seed)
    y = torch.bernoulli(torch.sigmoid(X @ w_true), generator=_gen(500 + seed))
    return X, y


LOGISTIC = Problem(
    name="logistic",
    params=lambda seed: 0.05 + 0.2 * _rand(3, seed=seed),
    data=_logistic_data,
    optimality=logistic_optimality,
    solver=logistic_newton,
    init=lambda p, d: torch.zeros(3, dtype=F64),
    solver_args=lambda p, d: (p, *d),
    reference=lambda p, d: logistic_unrolled(p, *d),
    linear_solve=fi.CG(),
    rebuild=_logistic_rebuild,
)


# (3) A DEQ-style fixed point z = tanh(W z + U x + b), ||W||_2 = 0.4 (a contraction) -----------


def deq_map(z: torch.Tensor, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(params["W"] @ z + params["U"] @ x + params["b"])


def _deq_iterate(z: torch.Tensor, params: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
    for _ in range(80):  # 0.4^80 ~ 1e-32: converged to rounding
        z = deq_map(z, params, x)
    return z


def _deq_rebuild(solve: Any) -> Callable[..., Any]:
    return fi.fixed_point(deq_map, solve=solve)(_deq_iterate)


# The default linear solver (GMRES): A = I - dF/dz is not symmetric.
deq_solver = fi.fixed_point(deq_map)(_deq_iterate)


def deq_unrolled(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Autograd through 200 iterations from 0; derivatives converge like 200 * 0.4^200."""
    z = torch.zeros(params["b"].shape[-1], dtype=F64)
    for _ in range(200):
        z = deq_map(z, params, x)
    return z


def _deq_params(seed: int) -> dict[str, torch.Tensor]:
    W = _randn(4, 4, seed=600 + seed)
    W = 0.4 * W / torch.linalg.matrix_norm(W, ord=2)
    return {"W": W, "U": 0.7 * _randn(4, 3, seed=700 + seed), "b": 0.3 * _randn(4, seed=800 + seed)}


DEQ = Problem(
    name="deq",
    params=_deq_params,
    data=lambda seed: (_randn(3, seed=900 + seed),),
    optimality=lambda z, params, x: z - deq_map(z, params, x),
    solver=deq_solver,
    init=lambda p, d: torch.zeros(4, dtype=F64),
    solver_args=lambda p, d: (p, *d),
    reference=lambda p, d: deq_unrolled(p, *d),
    linear_solve=fi.GMRES(),
    rebuild=_deq_rebuild,
)


# (4) A 0-d root: c x^3 = s, x* = (s / c)^(1/3) ------------------------------------------------


def cube_optimality(x: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return c * x**3 - s


def _cube_newton(x: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> Any:
    for _ in range(40):  # Newton from x = 1 (s / c in [0.5, 3]: converges)
        x = x - cube_optimality(x, s, c) / (3 * c * x**2)
    return x


def _cube_rebuild(solve: Any) -> Callable[..., Any]:
    return fi.implicit_root(cube_optimality, solve=solve)(_cube_newton)


cube_solver = fi.implicit_root(cube_optimality)(_cube_newton)  # default solver, 0-d problem


CUBE = Problem(
    name="cube0d",
    params=lambda seed: 1.5 + _rand((), seed=seed),
    data=lambda seed: (1.0 + 0.5 * _rand((), seed=1000 + seed),),
    optimality=cube_optimality,
    solver=cube_solver,
    init=lambda p, d: torch.ones((), dtype=F64),
    solver_args=lambda p, d: (p, *d),
    reference=lambda p, d: (p / d[0]) ** (1.0 / 3.0),
    linear_solve=fi.GMRES(),
    rebuild=_cube_rebuild,
)


# (5) Two coupled leaves: minimize 0.5 z^T K z - p^T z, z = (a, b), K = K0 + diag(exp(s)) --------

Pair = collections.namedtuple("Pair", ["a", "b"])


def _coupled_matrix(params: dict[str, Any], G: torch.Tensor) -> torch.Tensor:
    # Symmetric positive definite for any G (also when gradcheck perturbs one entry of G).
    # Off-diagonal blocks comparable to the diagonal ones: a solver that ignored the coupling
    # between the leaves a and b would be far off.
    K0 = G @ G.mT / 5 + 0.5 * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return K0 + torch.diag_embed(torch.exp(params["s"]))


def coupled_optimality(z: Pair, params: dict[str, Any], G: torch.Tensor) -> Pair:
    joint = _coupled_matrix(params, G) @ torch.cat([z.a, z.b]) - torch.cat(list(params["p"]))
    return Pair(joint[:2], joint[2:])


def coupled_closed_form(params: dict[str, Any], G: torch.Tensor) -> Pair:
    L = torch.linalg.cholesky(_coupled_matrix(params, G))
    joint = torch.cholesky_solve(torch.cat(list(params["p"])).unsqueeze(-1), L).squeeze(-1)
    return Pair(joint[:2], joint[2:])


def _coupled_inner(init: Pair, params: dict[str, Any], G: torch.Tensor) -> Pair:
    return coupled_closed_form(params, G)


def _coupled_rebuild(solve: Any) -> Callable[..., Any]:
    return fi.implicit_root(coupled_optimality, solve=solve)(_coupled_inner)


coupled_solver = _coupled_rebuild(fi.CG())


def _coupled_data(seed: int) -> tuple[torch.Tensor]:
    return (_randn(5, 5, seed=1100 + seed),)


COUPLED = Problem(
    name="coupled",
    params=lambda seed: {
        "p": (_randn(2, seed=1200 + seed), _randn(3, seed=1300 + seed)),
        "s": 0.3 * _randn(5, seed=1400 + seed),
    },
    data=_coupled_data,
    optimality=coupled_optimality,
    solver=coupled_solver,
    init=lambda p, d: Pair(torch.zeros(2, dtype=F64), torch.zeros(3, dtype=F64)),
    solver_args=lambda p, d: (p, *d),
    reference=lambda p, d: coupled_closed_form(p, *d),
    linear_solve=fi.CG(),
    rebuild=_coupled_rebuild,
)


PROBLEMS: tuple[Problem, ...] = (RIDGE, LOGISTIC, DEQ, CUBE, COUPLED)
BY_NAME = {p.name: p for p in PROBLEMS}
IDS = [p.name for p in PROBLEMS]

#: seeds of the tasks used in vmap tests (each task has its own data)
TASK_SEEDS = (1, 2, 3)


# --------------------------------------------------------------------------------------------
# References (classic autograd on the reference map; cached per problem and seeds)


def flat_params(
    problem: Problem, seed: int = 0
) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    params = problem.params(seed)
    return ravel(params), unraveler(params)


def flat_solution_fn(
    problem: Problem, data: tuple[Any, ...], unravel: Callable[..., Any], which: str = "solve"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> ravel(theta*(unravel(v)))`` via the implicit solver or the reference."""
    fn = problem.solve if which == "solve" else problem.reference
    return lambda v: ravel(fn(unravel(v), data))


def loss_fn(
    problem: Problem, data: tuple[Any, ...], unravel: Callable[..., Any], which: str = "solve"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> outer_loss(theta*(unravel(v)))`` via the implicit solver or the reference."""
    fn = problem.solve if which == "solve" else problem.reference
    return lambda v: outer_loss(fn(unravel(v), data))


@functools.cache
def _reference_quantity(name: str, key: str, param_seed: int, data_seed: int) -> torch.Tensor:
    problem = BY_NAME[name]
    v, unravel = flat_params(problem, param_seed)
    data = problem.data(data_seed)
    sol = flat_solution_fn(problem, data, unravel, "reference")
    loss = loss_fn(problem, data, unravel, "reference")
    if key == "v":
        return v
    if key == "solution":
        return sol(v).detach()
    if key == "jacobian":
        jacobian: torch.Tensor = torch.autograd.functional.jacobian(sol, v)  # type: ignore[no-untyped-call]
        return jacobian
    if key == "grad":
        vv = v.clone().requires_grad_(True)
        return torch.autograd.grad(loss(vv), vv)[0]
    if key == "hessian":
        hessian: torch.Tensor = torch.autograd.functional.hessian(loss, v)  # type: ignore[no-untyped-call]
        return hessian
    raise KeyError(key)


class _References:
    """Lazily computed, cached reference quantities of one (problem, params seed, data seed)."""

    def __init__(self, name: str, param_seed: int, data_seed: int) -> None:
        self._args = (name, param_seed, data_seed)

    def __getitem__(self, key: str) -> torch.Tensor:
        name, param_seed, data_seed = self._args
        return _reference_quantity(name, key, param_seed, data_seed)


def reference_derivatives(name: str, param_seed: int = 0, data_seed: int = 0) -> Any:
    """Reference ``v`` (flat params), ``solution``, ``jacobian`` (d ravel(theta*) / dv), ``grad``
    and ``hessian`` (of ``outer_loss(theta*)`` in v): classic autograd on the reference map."""
    return _References(name, param_seed, data_seed)


def task_data(problem: Problem, seeds: tuple[int, ...] = TASK_SEEDS) -> tuple[Any, ...]:
    """The per-task data of ``seeds`` stacked along dimension 0."""
    stacked: tuple[Any, ...] = stack_trees([problem.data(s) for s in seeds])
    return stacked


def central_difference_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Central finite differences, column by column (error ~ eps^2 + rounding / eps ~ 1e-10)."""
    columns = []
    with torch.no_grad():
        for i in range(v.numel()):
            e = torch.zeros_like(v)
            e[i] = eps
            columns.append((fn(v + e) - fn(v - e)) / (2 * eps))
    return torch.stack(columns, dim=-1)
