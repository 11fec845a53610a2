"""Derivatives through the code people write: modules, bound methods, callable objects,
closures, globals, containers, default arguments and keywords, in every callback position,
under every transform; each against a dense float64 reference, or the clear refusal.

The problems have closed forms: a contraction ``z = W z + x`` (``z* = (I - W)^{-1} x``), a
minimization ``min 0.5 |z|^2 + 0.5 |W z - x|^2`` (``z* = (I + W^T W)^{-1} W^T x``) and a linear
system ``(I - W) z = x``. The references are ``torch.linalg.solve`` differentiated by autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import pytest
import torch
from problems import contraction

import funcimplicit as fi

F64 = torch.float64
N = 3

pytestmark = pytest.mark.usefixtures("one_thread")

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# -------------------------------------------------------------------------------------------
# The mathematics: each core reads W; the patterns below hand W to it in different ways.


def fixed_point_core(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w @ z + x


def objective_core(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z @ z) + 0.5 * ((w @ z - x) ** 2).sum()


def matvec_core(v: torch.Tensor, _unused: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
    return v - w @ v


def reference(callback: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(N, dtype=F64)
    if callback == "minimize":
        solved: torch.Tensor = torch.linalg.solve(eye + w.mT @ w, w.mT @ x)
        return solved
    solved = torch.linalg.solve(eye - w, x)
    return solved


# -------------------------------------------------------------------------------------------
# How user code hands W to a callback.

_GLOBAL: dict[str, Any] = {}


class _Cell(torch.nn.Module):
    def __init__(self, w: torch.Tensor, core: Core) -> None:
        super().__init__()
        self.w = w
        self.core = core

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.core(z, x, self.w)


class _Holder:
    def __init__(self, w: torch.Tensor, core: Core) -> None:
        self.w = w
        self.core = core

    def step(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.core(z, x, self.w)

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.core(z, x, self.w)


def _from_global(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _GLOBAL["core"](z, x, _GLOBAL["w"])  # type: ignore[no-any-return]


EXPLICIT = ["explicit", "keyword"]
CAPTURED = [
    "module",
    "bound_method",
    "callable_object",
    "closure",
    "container",
    "global",
    "default_argument",
    "partial",
]
PATTERNS = EXPLICIT + CAPTURED


def build(
    pattern: str, w: torch.Tensor, core: Core
) -> tuple[Callable[..., torch.Tensor], tuple[Any, ...], dict[str, Any]]:
    """``(fn, extra, keywords)`` with ``fn(z, x, *extra, **keywords) = core(z, x, w)``."""
    if pattern == "explicit":
        return (lambda z, x, w: core(z, x, w)), (w,), {}
    if pattern == "keyword":

        def by_keyword(z: torch.Tensor, x: torch.Tensor, *, w: torch.Tensor) -> torch.Tensor:
            return core(z, x, w)

        return by_keyword, (), {"w": w}
    if pattern == "module":
        return _Cell(w, core), (), {}
    if pattern == "bound_method":
        return _Holder(w, core).step, (), {}
    if pattern == "callable_object":
        return _Holder(w, core), (), {}
    if pattern == "closure":
        return (lambda z, x: core(z, x, w)), (), {}
    if pattern == "container":
        box = {"weights": [w]}
        return (lambda z, x: core(z, x, box["weights"][0])), (), {}
    if pattern == "global":
        _GLOBAL.update(w=w, core=core)
        return _from_global, (), {}
    if pattern == "default_argument":

        def with_default(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
            return core(z, x, w)

        return with_default, (), {}
    assert pattern == "partial"
    return functools.partial(lambda z, x, w: core(z, x, w), w=w), (), {}


# -------------------------------------------------------------------------------------------
# The callbacks: each returns z*(W, x) computed by the library.


def _iterate(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    for _ in range(200):  # spectral radius 0.5: converged to rounding
        z = fn(z)
    return z


def via_optimality(pattern: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    f, extra, kw = build(pattern, w, fixed_point_core)

    def optimality(z: torch.Tensor, x: torch.Tensor, *extra: Any, **kw: Any) -> torch.Tensor:
        return z - f(z, x, *extra, **kw)

    @fi.implicit_root(optimality)
    def solver(z0: torch.Tensor, x: torch.Tensor, *extra: Any, **kw: Any) -> torch.Tensor:
        return _iterate(lambda z: f(z, x, *extra, **kw), z0)

    return solver(torch.zeros_like(x), x, *extra, **kw)


def via_fixed_point(pattern: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    f, extra, kw = build(pattern, w, fixed_point_core)

    @fi.fixed_point(f)
    def solver(z0: torch.Tensor, x: torch.Tensor, *extra: Any, **kw: Any) -> torch.Tensor:
        return _iterate(lambda z: f(z, x, *extra, **kw), z0)

    return solver(torch.zeros_like(x), x, *extra, **kw)


def via_solve_fixed_point(pattern: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    f, extra, _ = build(pattern, w, fixed_point_core)
    method = fi.FixedPointIteration(rtol=1e-13, atol=0.0, maxiter=200)
    return fi.solve_fixed_point(f, torch.zeros_like(x), x, *extra, method=method).value


def via_minimize(pattern: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    f, extra, _ = build(pattern, w, objective_core)
    method = fi.Newton(rtol=1e-13, atol=0.0)
    return fi.minimize(f, torch.zeros_like(x), x, *extra, method=method, solve=fi.CG()).value


def via_matvec(pattern: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    f, extra, _ = build(pattern, w, matvec_core)
    return fi.linear_solve(lambda v, *args: f(v, None, *args), x, *extra, solve=fi.GMRES())


CALLBACKS: dict[str, Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "optimality": via_optimality,
    "fixed_point": via_fixed_point,
    "solve_fixed_point": via_solve_fixed_point,
    "minimize": via_minimize,
    "matvec": via_matvec,
}
# Keywords reach a decorated solver only (the other entry points take no user keywords).
CASES = [
    (callback, pattern)
    for callback in CALLBACKS
    for pattern in PATTERNS
    if pattern != "keyword" or callback in ("optimality", "fixed_point")
]


def _reference_kind(callback: str) -> str:
    return "minimize" if callback == "minimize" else "fixed_point"


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    w = torch.eye(N, dtype=F64) - contraction(N, 0.5, seed)  # spectral radius 0.5
    x = torch.randn(N, generator=g, dtype=F64)
    weights = torch.rand(N, generator=g, dtype=F64) + 0.5
    return w, x, weights


def _loss(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights * z**2).sum() + z.sum()


# -------------------------------------------------------------------------------------------
# First order: exact for every pattern, callback and transform.


@pytest.mark.parametrize(("callback", "pattern"), CASES)
def test_backward(callback: str, pattern: str) -> None:
    w0, x, weights = _data()
    w = w0.clone().requires_grad_()
    _loss(CALLBACKS[callback](pattern, w, x), weights).backward()  # type: ignore[no-untyped-call]
    w_ref = w0.clone().requires_grad_()
    _loss(reference(_reference_kind(callback), w_ref, x), weights).backward()  # type: ignore[no-untyped-call]
    assert w.grad is not None
    assert w_ref.grad is not None
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("callback", "pattern"), CASES)
def test_func_grad(callback: str, pattern: str) -> None:
    w0, x, weights = _data()
    got = torch.func.grad(lambda w: _loss(CALLBACKS[callback](pattern, w, x), weights))(w0)
    want = torch.func.grad(lambda w: _loss(reference(_reference_kind(callback), w, x), weights))(w0)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("callback", "pattern"), CASES)
def test_jvp(callback: str, pattern: str) -> None:
    w0, x, _ = _data()
    dw = torch.randn(
        N, N, generator=torch.Generator(device=torch.get_default_device()).manual_seed(5), dtype=F64
    )
    got = torch.func.jvp(lambda w: CALLBACKS[callback](pattern, w, x), (w0,), (dw,))[1]
    want = torch.func.jvp(lambda w: reference(_reference_kind(callback), w, x), (w0,), (dw,))[1]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("callback", "pattern"), CASES)
def test_vmap_grad(callback: str, pattern: str) -> None:
    data = [_data(seed) for seed in range(3)]
    ws = torch.stack([d[0] for d in data])
    xs = torch.stack([d[1] for d in data])
    weights = data[0][2]

    def meta(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _loss(CALLBACKS[callback](pattern, w, x), weights)

    got = torch.func.vmap(torch.func.grad(meta))(ws, xs)
    want = torch.stack(
        [
            torch.func.grad(
                lambda w, x=x: _loss(reference(_reference_kind(callback), w, x), weights)
            )(w)
            for w, x in zip(ws, xs, strict=True)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


# -------------------------------------------------------------------------------------------
# Second order: exact for explicit arguments; refused for captured tensors.

SECOND_ORDER_CASES = [(c, p) for c, p in CASES if c in ("optimality", "fixed_point", "matvec")]


@pytest.mark.parametrize(("callback", "pattern"), SECOND_ORDER_CASES)
def test_hessian(callback: str, pattern: str) -> None:
    w0, x, weights = _data()

    def loss(w: torch.Tensor) -> torch.Tensor:
        return _loss(CALLBACKS[callback](pattern, w, x), weights)

    if pattern in CAPTURED:
        with pytest.raises(NotImplementedError, match="second derivative through a tensor"):
            torch.func.hessian(loss)(w0)
        return
    want = torch.func.hessian(lambda w: _loss(reference(_reference_kind(callback), w, x), weights))(
        w0
    )
    torch.testing.assert_close(torch.func.hessian(loss)(w0), want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("callback", "pattern"), SECOND_ORDER_CASES)
def test_double_backward(callback: str, pattern: str) -> None:
    w0, x, weights = _data()
    direction = torch.randn(
        N, N, generator=torch.Generator(device=torch.get_default_device()).manual_seed(7), dtype=F64
    )

    def second(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        w = w0.clone().requires_grad_()
        (g,) = torch.autograd.grad(_loss(fn(w), weights), w, create_graph=True)
        (h,) = torch.autograd.grad((g * direction).sum(), w)
        return h

    def implicit(w: torch.Tensor) -> torch.Tensor:
        return CALLBACKS[callback](pattern, w, x)

    if pattern in CAPTURED:
        with pytest.raises(NotImplementedError, match="second derivative through a tensor"):
            second(implicit)
        return
    want = second(lambda w: reference(_reference_kind(callback), w, x))
    torch.testing.assert_close(second(implicit), want, rtol=1e-8, atol=1e-10)


# -------------------------------------------------------------------------------------------
# Regressions: each item of the issue "Derivatives through the code people write".


class _DEQCell(torch.nn.Module):
    """z = tanh(W z + U x + c): a deep-equilibrium cell as PyTorch code writes it."""

    def __init__(self, width: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = torch.nn.Linear(width, width, bias=False, dtype=F64)
        self.inject = torch.nn.Linear(width, width, dtype=F64)
        with torch.no_grad():
            self.hidden.weight.mul_(0.4 / torch.linalg.matrix_norm(self.hidden.weight, ord=2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.hidden(z) + self.inject(x))


def _unrolled_grads(cell: _DEQCell, x: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of the unrolled iteration, run until it has converged to rounding."""
    z = torch.zeros_like(x)
    for _ in range(120):  # contraction factor <= 0.4
        z = cell(z, x)
    return list(
        torch.autograd.grad(_loss(z, torch.ones(x.shape[-1], dtype=F64)), list(cell.parameters()))
    )


@pytest.mark.parametrize("entry", ["fixed_point", "solve_fixed_point"])
def test_module_cell_parameters_get_exact_gradients(entry: str) -> None:
    cell = _DEQCell(4)
    x = torch.randn(
        5, 4, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(1)
    )
    if entry == "fixed_point":

        @fi.fixed_point(cell)
        def equilibrium(z0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return _iterate(lambda z: cell(z, x), z0)

        z = equilibrium(torch.zeros_like(x), x)
    else:
        z = fi.solve_fixed_point(cell, torch.zeros_like(x), x, method=fi.Anderson()).value
    _loss(z, torch.ones(4, dtype=F64)).backward()  # type: ignore[no-untyped-call]
    for param, want in zip(cell.parameters(), _unrolled_grads(_DEQCell(4), x), strict=True):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, want, rtol=1e-8, atol=1e-10)


def test_module_objective_in_minimize() -> None:
    torch.manual_seed(3)
    model = torch.nn.Linear(N, N, bias=False, dtype=F64)
    x = torch.randn(N, dtype=F64)

    def objective(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # a closure over a module
        value: torch.Tensor = 0.5 * (z @ z) + 0.5 * ((model(z) - x) ** 2).sum()
        return value

    z = fi.minimize(objective, torch.zeros(N, dtype=F64), x, method=fi.Newton()).value
    z.sum().backward()  # type: ignore[no-untyped-call]
    w = model.weight.detach().clone().requires_grad_()
    reference("minimize", w, x).sum().backward()  # type: ignore[no-untyped-call]
    assert model.weight.grad is not None
    assert w.grad is not None
    torch.testing.assert_close(model.weight.grad, w.grad, rtol=1e-9, atol=1e-11)


def test_linear_layer_as_matvec() -> None:
    torch.manual_seed(4)
    layer = torch.nn.Linear(N, N, bias=False, dtype=F64)
    with torch.no_grad():
        layer.weight.add_(3 * torch.eye(N, dtype=F64))  # well conditioned
    b = torch.randn(N, dtype=F64, requires_grad=True)
    fi.linear_solve(layer, b, solve=fi.GMRES()).sum().backward()  # type: ignore[no-untyped-call]
    w = layer.weight.detach().clone().requires_grad_()
    b_ref = b.detach().clone().requires_grad_()
    torch.linalg.solve(w, b_ref).sum().backward()
    assert layer.weight.grad is not None
    assert b.grad is not None
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-9, atol=1e-11)


def _scaled(x: torch.Tensor, a: torch.Tensor, scale: Any = 2.0) -> torch.Tensor:
    out: torch.Tensor = scale * x - a  # root x* = a / scale
    return out


@fi.implicit_root(_scaled)
def _divide(init: torch.Tensor, a: torch.Tensor, scale: Any = 2.0) -> torch.Tensor:
    return torch.as_tensor(a / scale)


def test_keyword_arguments_reach_the_optimality_function() -> None:
    a = torch.tensor([1.0, 3.0], dtype=F64, requires_grad=True)
    _divide(torch.zeros(2, dtype=F64), a, scale=4.0).sum().backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None
    torch.testing.assert_close(a.grad, torch.full((2,), 0.25, dtype=F64))  # not 1/2


def test_tensor_keyword_is_differentiable() -> None:
    a = torch.tensor([1.0, 3.0], dtype=F64)
    scale = torch.tensor(4.0, dtype=F64, requires_grad=True)
    _divide(torch.zeros(2, dtype=F64), a, scale=scale).sum().backward()  # type: ignore[no-untyped-call]
    assert scale.grad is not None
    torch.testing.assert_close(scale.grad, -(a / scale**2).sum().detach())  # d(a/s)/ds


def test_keyword_argnums_count_signature_positions() -> None:
    # scale given by keyword is position 2 of the signature: argnums=1 leaves it constant.
    @fi.implicit_root(_scaled, argnums=1)
    def divide(init: torch.Tensor, a: torch.Tensor, scale: Any = 2.0) -> torch.Tensor:
        return torch.as_tensor(a / scale)

    a = torch.tensor([1.0, 3.0], dtype=F64, requires_grad=True)
    scale = torch.tensor(4.0, dtype=F64, requires_grad=True)
    divide(torch.zeros(2, dtype=F64), a, scale=scale).sum().backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None
    assert scale.grad is None
    torch.testing.assert_close(a.grad, torch.full((2,), 0.25, dtype=F64))


lam = torch.tensor(123.0)  # an unrelated global of the same name as an attribute below


class _Hyper:
    def __init__(self, lam: torch.Tensor) -> None:
        self.lam = lam


def test_attribute_named_like_a_global_is_not_refused() -> None:
    def stationarity(w: torch.Tensor, hp: _Hyper) -> torch.Tensor:
        return (1 + hp.lam) * w - 1.0  # w* = 1 / (1 + lam)

    @fi.implicit_root(stationarity)
    def fit(w0: torch.Tensor, hp: _Hyper) -> torch.Tensor:
        return 1.0 / (1 + hp.lam) * torch.ones_like(w0)

    hp_lam = torch.tensor(1.0, dtype=F64, requires_grad=True)
    fit(torch.zeros(2, dtype=F64), _Hyper(hp_lam)).sum().backward()  # type: ignore[no-untyped-call]
    assert hp_lam.grad is not None
    torch.testing.assert_close(hp_lam.grad, torch.tensor(-2 / 4, dtype=F64))  # -2/(1+lam)^2


def test_root_vjp_and_jvp_answer_per_position() -> None:
    def optimality(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 2 * x - a - 3 * b  # x* = (a + 3 b) / 2

    t = torch.tensor([1.0, -2.0], dtype=F64)
    solution = (t + 3 * t) / 2
    ones = torch.ones(2, dtype=F64)
    grad_a, grad_b = fi.root_vjp(optimality, solution, (t, t), ones)
    torch.testing.assert_close(grad_a, 0.5 * ones)
    torch.testing.assert_close(grad_b, 1.5 * ones)
    tangent = fi.root_jvp(optimality, solution, (t, t), (ones, 2 * ones))
    torch.testing.assert_close(tangent, 0.5 * ones + 1.5 * 2 * ones)


def _not_a_root(on_failure: Literal["warn", "raise", "ignore"]) -> torch.Tensor:
    @fi.implicit_root(_scaled, solve=fi.GMRES(on_failure=on_failure))
    def lazy(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return init  # never solves anything

    return lazy(torch.zeros(2, dtype=F64), torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True))


def test_a_point_that_is_not_a_root_is_reported() -> None:
    with pytest.warns(fi.ConvergenceWarning, match=r"not a root.*max \|T\(x\*, args\)\| = 2"):
        _not_a_root("warn")
    with pytest.raises(fi.ConvergenceError, match="not a root"):
        _not_a_root("raise")


def test_a_converged_float32_solve_is_not_reported() -> None:
    a = torch.tensor([1.0, 3.0])

    @fi.implicit_root(_scaled)
    def divide(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        z = init
        for _ in range(60):  # fixed-point iteration of x = x - 0.25 (2 x - a), to rounding
            z = z - 0.25 * _scaled(z, a)
        return z

    # Warnings are errors in the test suite: a report here would fail the test.
    divide(torch.zeros(2), a.requires_grad_()).sum().backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None
    torch.testing.assert_close(a.grad, torch.full((2,), 0.5))


def test_saved_tensor_hooks_around_a_solver_whose_optimality_uses_torch_func() -> None:
    # torch.func.grad refuses to run under saved_tensors_hooks (e.g. save_on_cpu); the rule
    # evaluates T in the forward pass, so it sets the hooks aside for that one evaluation.
    def objective(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return ((w - a) ** 2).sum() + (w**4).sum()

    def stationarity(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        g: torch.Tensor = torch.func.grad(objective)(w, a)
        return g

    @fi.implicit_root(stationarity, solve=fi.CG())
    def solver(w0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        w = w0
        for _ in range(50):  # Newton's method by hand (a convex 1-d problem per entry)
            w = w - (2 * (w - a) + 4 * w**3) / (2 + 12 * w**2)
        return w

    a = torch.tensor([0.5, -1.0], dtype=F64, requires_grad=True)
    with torch.autograd.graph.save_on_cpu():
        w = solver(torch.zeros(2, dtype=F64), a)
    w.sum().backward()  # type: ignore[no-untyped-call]
    # 2 (w - a) + 4 w^3 = 0  =>  dw/da = 2 / (2 + 12 w^2)
    assert a.grad is not None
    torch.testing.assert_close(a.grad, (2 / (2 + 12 * w.detach() ** 2)), rtol=1e-9, atol=1e-12)


def test_module_cell_under_torch_func_with_functional_call() -> None:
    # The documented torch.func pattern: the parameters are the function's input, the cell is
    # called through functional_call inside the fixed-point map.
    cell = _DEQCell(4)
    x = torch.randn(
        5, 4, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(1)
    )
    params = {k: v.detach() for k, v in cell.named_parameters()}

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        def f(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.func.functional_call(cell, params, (z, x))
            return out

        z = fi.solve_fixed_point(f, torch.zeros_like(x), x, method=fi.Anderson()).value
        return _loss(z, torch.ones(4, dtype=F64))

    got = torch.func.grad(loss)(params)
    want = _unrolled_grads(_DEQCell(4), x)
    for name, expected in zip(params, want, strict=True):
        torch.testing.assert_close(got[name], expected, rtol=1e-8, atol=1e-10)


def test_inner_iterations_record_nothing_through_module_parameters() -> None:
    # The ready-made solvers run their iterations without recording a graph, also when the
    # callback reads parameters that require grad: what the forward pass saves for backward
    # does not grow with the number of iterations (it did, through the module's parameters).
    cell = _DEQCell(4)
    x = torch.randn(
        5, 4, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(1)
    )

    def saved_bytes(rtol: float) -> tuple[int, int]:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        method = fi.FixedPointIteration(rtol=rtol, atol=0.0, maxiter=500)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sol = fi.solve_fixed_point(cell, torch.zeros_like(x), x, method=method)
        return sum(storages.values()), int(sol.iterations)

    loose, tight = saved_bytes(1e-2), saved_bytes(1e-12)
    assert tight[1] > 3 * loose[1]  # many more iterations ...
    assert tight[0] == loose[0]  # ... and not one byte more saved for backward


class _RecycledNode:
    """An autograd node's Python wrapper as torch hands it out: made afresh on each access and
    freed once unreferenced, so the next one may reuse its ``id`` (as on a CUDA machine)."""

    __slots__ = ("inner",)

    def __init__(self, inner: dict[str, Any]) -> None:
        self.inner = inner

    @property
    def next_functions(self) -> tuple[tuple[_RecycledNode, int], ...]:
        return tuple((_RecycledNode(child), 0) for child in self.inner["children"])

    @property
    def variable(self) -> Any:
        return self.inner.get("variable")


class _RecycledTensor:
    def __init__(self, inner: dict[str, Any]) -> None:
        self.inner = inner

    @property
    def grad_fn(self) -> _RecycledNode:
        return _RecycledNode(self.inner)


def test_captured_tensor_found_when_node_wrappers_are_recycled() -> None:
    """The walk that finds captured tensors (refused for second order) kept only the ids of
    node wrappers; a freed wrapper's id came back for the next node, which was then taken for
    an explicit argument's node and skipped: on a CUDA machine every captured tensor of
    ``test_hessian`` and ``test_double_backward`` was missed, and no refusal came (a second
    derivative silently without its captured term). Fresh wrappers reproduce it on any
    machine."""
    from funcimplicit._rules.root_checks import captured

    w = torch.zeros(3, dtype=F64)
    explicit: dict[str, Any] = {"children": []}
    z = {"children": [{"children": [], "variable": w}, explicit]}
    found = captured([_RecycledTensor(z)], [_RecycledTensor(explicit)])  # type: ignore[list-item]
    assert found == ["a tensor of shape (3,)"]
