"""torch.compile: every supported path equals eager, and no combination is silently wrong.

Pinned here, for torch 2.13 (a torch upgrade that changes any of it fails a test):

- solver loops and ``fi.hypergradient`` compile as one graph (``fullgraph=True``): no graph
  break, hence no host read or host-device synchronization inside them; loops run their
  full ``maxiter`` with finished elements frozen;
- ``torch.compile(loss)`` then ``.backward()`` uses the implicit rule (the rule runs eagerly);
- ``torch.compile`` of a ``torch.func`` transform (grad, jvp, vmap(grad), jacrev, jacfwd,
  hessian) of an implicit function equals eager (before the rules were kept out of compile,
  grad and jvp failed with "Cannot access storage of TensorWrapper");
- ``fullgraph=True`` through an implicit function raises an error naming ``fi.hypergradient``.

The aot_eager backend keeps most tests fast (it checks tracing and graph breaks, not
inductor's code generation); the tests marked ``inductor`` compile tiny problems with the
default backend, as users do (tens of seconds each on a 2-core CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import inner_methods
import problems
import pytest
import torch

import funcimplicit as fi
from funcimplicit._rules import kernels

F64 = torch.float64

# While tracing past an autograd.Function, torch 2.13's dynamo itself instantiates the
# Function class and reads .grad of non-leaf tensors, and torch warns about its own use
# (with filterwarnings=error the warning would become an error inside dynamo). Nothing in
# funcimplicit or in these tests does either.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
        ":DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
    ),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    if request.node.get_closest_marker("inductor") is None:
        # The backward solve the rule compiles for a compiled caller: quick to compile here.
        monkeypatch.setattr(kernels, "BACKEND", "aot_eager")


def test_cg_compiles_without_graph_breaks() -> None:
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=F64)
    a, b = m @ m.T / 6 + torch.eye(6, dtype=F64), torch.randn(6, dtype=F64)
    solver = fi.CG(maxiter=8, rtol=1e-12)

    def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solver.run(lambda v: a @ v, b).solution

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a, b), solve(a, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled(a, b), torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_anderson_fixed_point_compiles_whole() -> None:
    a = torch.linspace(-1.0, 1.0, 4, dtype=F64)
    method = fi.Anderson(maxiter=12, on_failure="ignore")

    def solve(a: torch.Tensor) -> torch.Tensor:
        def layer(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return torch.tanh(0.5 * z + a)

        start = torch.zeros(4, dtype=F64)
        return fi.solve_fixed_point(layer, start, a, method=method, implicit=False).value

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")
    z = compiled(a)
    torch.testing.assert_close(z, solve(a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, torch.tanh(0.5 * z + a), rtol=1e-9, atol=1e-9)


def test_compiled_loss_backward_through_implicit_root() -> None:
    # torch.compile(loss) followed by .backward(): the custom backward is used (FINDINGS).
    def cube(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x**3 - a

    @fi.implicit_root(cube, solve=fi.CG(maxiter=5))
    def cube_root(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.sign() * a.abs() ** (1 / 3)

    def loss(a: torch.Tensor) -> torch.Tensor:
        return cube_root(torch.ones(2, dtype=F64), a).sum()

    a = torch.tensor([8.0, 27.0], dtype=F64, requires_grad=True)
    torch.compile(loss, backend="aot_eager")(a).backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None
    torch.testing.assert_close(a.grad, 1 / (3 * a.detach() ** (2 / 3)), rtol=1e-10, atol=0)


def _for_compile(entry: problems.Entry) -> Any:
    """A row of the linear-solver table with a trip count that suits the 5 x 5 system below
    (a compiled loop runs all of ``maxiter``): 12 Krylov steps, 80 Neumann terms."""
    if not entry.iterative:
        return entry.solver
    maxiter = 80 if isinstance(entry.solver, fi.Neumann) else 12
    return entry.with_(maxiter=maxiter, rtol=1e-13)


LINEAR_SOLVERS = [_for_compile(entry) for entry in problems.SOLVERS]


@pytest.mark.parametrize("solver", LINEAR_SOLVERS, ids=problems.SOLVER_IDS)
def test_every_linear_solver_compiles_as_one_graph(solver: Any) -> None:
    # Neumann needs ||I - A|| < 1: here ||M M^T / 25|| = 0.61, so 80 terms reach 1e-17.
    m = torch.randn(
        5, 5, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(0)
    )
    a, b = torch.eye(5, dtype=F64) + m @ m.T / 25, torch.ones(5, dtype=F64)

    def solve(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = solver.run(lambda v: a @ v, b)
        return result.solution, result.converged

    x, converged = torch.compile(solve, fullgraph=True, backend="aot_eager")(a, b)
    torch.testing.assert_close(x, solve(a, b)[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    assert bool(converged)


def _contraction(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.tanh(0.5 * z + a)


@pytest.mark.parametrize("row", inner_methods.METHODS, ids=inner_methods.IDS)
def test_every_inner_method_compiles_as_one_graph(row: inner_methods.Row) -> None:
    """Every row of the inner-method table, on the first kind of problem it declares, traced
    as one graph (the loop's trip count: 4) and equal to eager. A method's own linear solve is
    made dense here: an iterative one would be unrolled inside every step (compile time grows
    about 20x), and the Krylov solvers compile on their own above."""
    changes: dict[str, Any] = {"maxiter": 4, "on_failure": "ignore"}
    if hasattr(row.method, "solve"):
        changes["solve"] = fi.LU()
    method = row.with_(**changes)
    problem = inner_methods.problem(row.kinds[0])

    def run(c: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = problem.solve(method, c, implicit=False).value
        return value

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(problem.c), run(problem.c), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# torch.func transforms of implicit functions, compiled: equal to eager.

_A = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.5, 0.2], [0.0, 0.2, 1.0]], dtype=F64)


def _through_linear_solve(a: torch.Tensor) -> torch.Tensor:
    def matvec(v: torch.Tensor, m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return m @ v + a * v

    ones = torch.ones(3, dtype=F64)
    return fi.linear_solve(matvec, ones, _A, a, solve=fi.CG(maxiter=10)).square().sum()


def _fixed_point_layer(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.tanh(0.5 * z + a)


def _through_fixed_point(a: torch.Tensor) -> torch.Tensor:
    method = fi.Anderson(maxiter=40)
    start = torch.zeros(3, dtype=F64)
    z = fi.solve_fixed_point(_fixed_point_layer, start, a, method=method, solve=fi.GMRES())
    return z.value.square().sum()


def _cube(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x**3 - a


@fi.implicit_root(_cube, solve=fi.CG(maxiter=5))
def _cube_root(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a.sign() * a.abs() ** (1 / 3)


def _through_implicit_root(a: torch.Tensor) -> torch.Tensor:
    return _cube_root(torch.ones(3, dtype=F64), a).square().sum()


IMPLICIT_FUNCTIONS = {
    "linear_solve": _through_linear_solve,
    "solve_fixed_point": _through_fixed_point,
    "implicit_root": _through_implicit_root,
}


def _stacked(f: Any) -> Any:
    return lambda a: torch.func.vmap(torch.func.grad(f))(torch.stack([a, 1.5 * a]))


TRANSFORMS: dict[str, Callable[[Callable[[torch.Tensor], torch.Tensor]], Any]] = {
    "grad": torch.func.grad,
    "jvp": lambda f: lambda a: torch.func.jvp(f, (a,), (torch.ones_like(a),))[1],
    "vmap_grad": _stacked,
    "jacrev": torch.func.jacrev,
    "jacfwd": torch.func.jacfwd,
    "hessian": torch.func.hessian,
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("function", list(IMPLICIT_FUNCTIONS))
def test_compiled_transform_of_an_implicit_function_equals_eager(
    function: str, transform: str
) -> None:
    # On torch 2.13 dynamo falls back to eager for the transform and the implicit rules are
    # kept out of compile (never_compiled), so the result is exactly eager's. Should dynamo
    # one day trace into the Function's forward and differentiate it (upstream 193279,
    # 192985) the derivative would be wrong (the solver sees detached inputs): this fails.
    fn: Callable[[torch.Tensor], torch.Tensor] = TRANSFORMS[transform](IMPLICIT_FUNCTIONS[function])
    a = torch.tensor([0.8, 2.0, 0.3], dtype=F64)
    expected = fn(a)
    got = torch.compile(fn, backend="aot_eager")(a)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("function", ["linear_solve", "implicit_root"])
@pytest.mark.parametrize("transform", ["none", "grad"])
def test_fullgraph_through_an_implicit_function_names_the_alternative(
    function: str, transform: str
) -> None:
    fn = IMPLICIT_FUNCTIONS[function]
    if transform == "grad":
        fn = torch.func.grad(fn)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    # Under torch.func.grad, dynamo refuses the rule's autograd.Function (it has a custom jvp)
    # before the Function's forward, where funcimplicit's own message is raised, can run; the
    # trace is refused either way, at compile time, before any value is computed.
    expected = r"fullgraph=True.*fi\.hypergradient"
    if transform == "grad":
        expected += r"|Unsupported custom jvp"
    with pytest.raises(Exception, match=expected):
        compiled(torch.tensor([0.8, 2.0, 0.3], dtype=F64))


# --------------------------------------------------------------------------------------------
# fi.hypergradient: one graph, alone and under vmap.


def _ridge_problem() -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    x, y = torch.randn(12, 4, generator=g, dtype=F64), torch.randn(12, generator=g, dtype=F64)
    xv, yv = torch.randn(8, 4, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    return x, y, xv, yv


def _stationarity(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
    return x.T @ (x @ w - y) + lam * w


def _ridge_hypergradient(
    lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    def val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> Any:
        return (xv @ w - yv).square().mean()

    w = torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)
    out = fi.hypergradient(
        val_loss, _stationarity, w, lam, x, y, solve=fi.CG(maxiter=6, rtol=1e-13)
    )
    return out.grad, out.adjoint.converged


def _ridge_reference(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
    x, y, xv, yv = data

    def loss(lam: torch.Tensor) -> torch.Tensor:
        w = torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)
        loss: torch.Tensor = (xv @ w - yv).square().mean()
        return loss

    reference: torch.Tensor = torch.func.grad(loss)(lam)
    return reference


def test_hypergradient_compiles_as_one_graph() -> None:
    data = _ridge_problem()
    lam = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=F64)
    explanation = torch._dynamo.explain(_ridge_hypergradient)(lam, *data)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(_ridge_hypergradient, fullgraph=True, backend="aot_eager")
    grad, converged = compiled(lam, *data)
    torch.testing.assert_close(grad, _ridge_hypergradient(lam, *data)[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, _ridge_reference(lam, *data), rtol=1e-9, atol=1e-13)
    assert bool(converged)


def test_hypergradient_compiles_under_vmap_without_recompiling() -> None:
    data = _ridge_problem()
    per_task = torch.func.vmap(_ridge_hypergradient, in_dims=(0, None, None, None, None))
    compiled = torch.compile(per_task, fullgraph=True, backend="aot_eager")
    g = torch.Generator(device=torch.get_default_device()).manual_seed(1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):  # new values, same shapes: one compilation serves every call
            lams = torch.rand(5, 4, generator=g, dtype=F64) + 0.05
            grads, converged = compiled(lams, *data)
            torch.testing.assert_close(grads, per_task(lams, *data)[0], rtol=1e-12, atol=1e-15)
            for lam, grad in zip(lams, grads, strict=True):
                torch.testing.assert_close(
                    grad, _ridge_reference(lam, *data), rtol=1e-9, atol=1e-13
                )
            assert bool(converged.all())


# --------------------------------------------------------------------------------------------
# Compiled user code around implicit_root: one compilation for every call with new tensors.
# Before the rule's packing ran eagerly, dynamo traced it, guarded on id() of per-call tensors
# ("Cache line invalidated because L['z'] got deallocated") and recompiled on every call until
# its recompile limit, then ran eagerly.


@fi.implicit_root(_stationarity, argnums=1, solve=fi.CG(maxiter=8, rtol=1e-13))
def _ridge(init: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> torch.Tensor:
    w: torch.Tensor = torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)
    return w


def _ridge_loss(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
    x, y, xv, yv = data
    return (xv @ _ridge(lam, lam, x, y) - yv).square().mean()


def _by_autograd(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(_ridge_loss(lam, *data), lam)
    return g


def _by_func(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.func.grad(_ridge_loss)(lam, *data)
    return out


def _recompiles() -> int:
    return int(sum(torch._dynamo.utils.counters["recompiles"].values()))


@pytest.mark.parametrize("how", ["autograd.grad", "func.grad", "backward"])
def test_compiled_user_code_does_not_recompile_and_equals_eager(how: str) -> None:
    data = _ridge_problem()
    g = torch.Generator(device=torch.get_default_device()).manual_seed(2)

    def via_backward(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        _ridge_loss(lam, *data).backward()  # type: ignore[no-untyped-call]
        assert lam.grad is not None
        return lam.grad

    fn = {"autograd.grad": _by_autograd, "func.grad": _by_func, "backward": via_backward}[how]
    compiled = torch.compile(fn, backend="aot_eager")

    def fresh() -> torch.Tensor:
        lam = torch.rand(4, generator=g, dtype=F64) + 0.05
        return lam if how == "func.grad" else lam.requires_grad_()

    compiled(fresh(), *data)
    before = _recompiles()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):  # new tensors, same shapes: the first compilation serves every call
            lam = fresh()
            got = compiled(lam, *data)
            want = fn(lam.detach().clone().requires_grad_(lam.requires_grad), *data)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(
                got, _ridge_reference(lam.detach(), *data), rtol=1e-9, atol=1e-13
            )
    assert _recompiles() == before


def test_compiled_user_code_uses_a_compiled_backward_solve_once_per_operator() -> None:
    # A classic first-order backward of a compiled call solves A^T u = v with a compiled
    # solve, reused by every later call (also with new, equal solver and wrapper objects:
    # fi.minimize builds its optimality function per call).
    data = _ridge_problem()
    x, y, xv, yv = data

    def objective(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x @ w - y).square().sum() + 0.5 * (lam * w * w).sum()

    def by_minimize(lam: torch.Tensor) -> torch.Tensor:
        start = torch.zeros(4, dtype=F64)
        method = fi.Newton(solve=fi.LU(), maxiter=5)
        w = fi.minimize(objective, start, lam, method=method, solve=fi.CG(maxiter=6)).value
        (g,) = torch.autograd.grad((xv @ w - yv).square().mean(), lam)
        return g

    calls = kernels.compiled_calls
    for fn in (lambda lam: _by_autograd(lam, *data), by_minimize):
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend="aot_eager")
        compiled(torch.ones(4, dtype=F64, requires_grad=True))
        before = _recompiles()
        with torch._dynamo.config.patch(error_on_recompile=True):
            for scale in (0.5, 2.0):
                lam = torch.full((4,), scale, dtype=F64, requires_grad=True)
                torch.testing.assert_close(
                    compiled(lam), _ridge_reference(lam.detach(), *data), rtol=1e-9, atol=1e-13
                )
        assert _recompiles() == before
    assert kernels.compiled_calls == calls + 6
    # Eager calls never compile anything.
    by_minimize(torch.ones(4, dtype=F64, requires_grad=True))
    assert kernels.compiled_calls == calls + 6


def test_a_long_backward_loop_is_solved_eagerly_for_a_compiled_caller() -> None:
    # A compiled loop runs all of its maxiter: beyond kernels.MAX_COMPILED_STEPS the backward
    # solve of a compiled caller runs eagerly (and stops early) instead of compiling for
    # minutes; the gradient is the same.
    data = _ridge_problem()
    x, y, xv, yv = data

    def stationarity(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return x.T @ (x @ w - y) + lam * w

    def loss(lam: torch.Tensor, maxiter: int) -> torch.Tensor:
        solve = fi.CG(maxiter=maxiter)

        @fi.implicit_root(stationarity, argnums=1, solve=solve)
        def ridge(w0: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)
            return out

        w = ridge(torch.zeros(4, dtype=F64), lam)
        (g,) = torch.autograd.grad((xv @ w - yv).square().mean(), lam)
        return g

    lam = torch.full((4,), 0.7, dtype=F64, requires_grad=True)
    for maxiter, compiled_solves in ((kernels.MAX_COMPILED_STEPS + 1, 0), (20, 1)):
        torch._dynamo.reset()
        calls = kernels.compiled_calls
        got = torch.compile(lambda lam, m=maxiter: loss(lam, m), backend="aot_eager")(lam)
        assert kernels.compiled_calls == calls + compiled_solves
        torch.testing.assert_close(
            got, _ridge_reference(lam.detach(), *data), rtol=1e-9, atol=1e-13
        )


def test_compiled_user_code_still_refuses_a_non_finite_cotangent() -> None:
    # The compiled backward solve checks the cotangent inside its graph: same error as eager.
    data = _ridge_problem()

    def nan_loss(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        x, y, _, _ = data
        w = _ridge(lam, lam, x, y)
        (g,) = torch.autograd.grad((w * torch.tensor(float("nan"), dtype=F64)).sum(), lam)
        return g

    compiled = torch.compile(nan_loss, backend="aot_eager")
    lam = torch.ones(4, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="cotangent of the solution contains NaN"):
        compiled(lam, *data)


def test_compiled_backward_solve_falls_back_to_eager_where_it_cannot_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # E.g. inductor without a working C++ compiler: one warning, then the eager solve.
    def broken(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels, "BACKEND", broken)
    data = _ridge_problem()
    compiled = torch.compile(_by_autograd, backend="aot_eager")
    lam = torch.ones(4, dtype=F64, requires_grad=True)
    with pytest.warns(UserWarning, match="runs eagerly instead"):
        got = compiled(lam, *data)
    torch.testing.assert_close(got, _ridge_reference(lam.detach(), *data), rtol=1e-9, atol=1e-13)
    got = compiled(lam, *data)  # not retried, no second warning (filterwarnings=error)
    torch.testing.assert_close(got, _ridge_reference(lam.detach(), *data), rtol=1e-9, atol=1e-13)


def test_compiled_user_code_under_vmap_of_grad_does_not_recompile() -> None:
    # iMAML's pattern: vmap over tasks of grad of an outer loss through implicit_root. On
    # torch 2.13 dynamo runs the transforms eagerly (the rule is not traceable); the call
    # must still compile once and give eager's values.
    data = _ridge_problem()
    per_task = torch.func.vmap(_by_func, in_dims=(0, None, None, None, None))
    compiled = torch.compile(per_task, backend="aot_eager")
    g = torch.Generator(device=torch.get_default_device()).manual_seed(3)
    compiled(torch.rand(3, 4, generator=g, dtype=F64) + 0.05, *data)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            lams = torch.rand(3, 4, generator=g, dtype=F64) + 0.05
            grads = compiled(lams, *data)
            torch.testing.assert_close(grads, per_task(lams, *data), rtol=1e-12, atol=1e-15)
            for lam, grad in zip(lams, grads, strict=True):
                torch.testing.assert_close(
                    grad, _ridge_reference(lam, *data), rtol=1e-9, atol=1e-13
                )


# --------------------------------------------------------------------------------------------
# The default (inductor) backend, as users compile: tiny problems, small trip counts.


# Inductor's CPU code generation uses torch.jit.script_method, and its lowering of diagonal
# torch._prims_common.check, both of which torch 2.13 itself deprecates; nothing here calls
# either.
@pytest.mark.inductor
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch._prims_common.check` is deprecated:FutureWarning")
def test_inductor_compiles_solvers_and_a_vmapped_hypergradient() -> None:
    torch.manual_seed(0)
    m = torch.randn(5, 5, dtype=F64)
    a, b = m @ m.T / 5 + torch.eye(5, dtype=F64), torch.randn(5, dtype=F64)

    def cg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fi.CG(maxiter=6, rtol=1e-13).run(lambda v: a @ v, b).solution

    torch.testing.assert_close(
        torch.compile(cg, fullgraph=True)(a, b), torch.linalg.solve(a, b), rtol=1e-9, atol=0
    )

    def anderson(a: torch.Tensor) -> torch.Tensor:
        method = fi.Anderson(maxiter=4, on_failure="ignore")
        start = torch.zeros(4, dtype=F64)
        return fi.solve_fixed_point(_contraction, start, a, method=method, implicit=False).value

    a4 = torch.linspace(0.1, 0.9, 4, dtype=F64)
    torch.testing.assert_close(
        torch.compile(anderson, fullgraph=True)(a4), anderson(a4), rtol=1e-12, atol=1e-14
    )

    data = _ridge_problem()
    per_task = torch.func.vmap(_ridge_hypergradient, in_dims=(0, None, None, None, None))
    lams = (
        torch.rand(
            3,
            4,
            generator=torch.Generator(device=torch.get_default_device()).manual_seed(2),
            dtype=F64,
        )
        + 0.1
    )
    grads, _ = torch.compile(per_task, fullgraph=True)(lams, *data)
    torch.testing.assert_close(grads, per_task(lams, *data)[0], rtol=1e-10, atol=1e-14)
