"""``fi.nn.ImplicitMetaGradientModule``: meta-gradients against independent references.

References: the closed-form ridge hypergradient; a dense float64 implicit derivative
(``hessian`` + ``linalg.solve`` of pure functions written here, not through the shell); the
functional ``fi.implicit_root``; and differentiation through an unrolled, converged inner loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

import funcimplicit as fi

D = torch.float64


def ravel(tree: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    names = list(tree)
    shapes = [tree[n].shape for n in names]
    sizes = [tree[n].numel() for n in names]
    flat = torch.cat([tree[n].reshape(-1) for n in names])

    def unravel(v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, sizes)
        return {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}

    return flat, unravel


def dense_meta_grad(
    objective: Callable[..., torch.Tensor],
    outer: Callable[..., torch.Tensor],
    phi: dict[str, torch.Tensor],
    meta: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``d outer(phi*(meta)) / d meta = -B^T H^{-1} grad outer`` with dense ``H`` and ``B``."""
    phi_vec, unravel_phi = ravel({k: v.detach() for k, v in phi.items()})
    meta_vec, unravel_meta = ravel({k: v.detach() for k, v in meta.items()})

    def f(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return objective(unravel_phi(p), unravel_meta(m))

    hess = torch.func.jacrev(torch.func.grad(f, argnums=0), argnums=0)(phi_vec, meta_vec)
    cross = torch.func.jacrev(torch.func.grad(f, argnums=0), argnums=1)(phi_vec, meta_vec)
    g = torch.func.grad(lambda p: outer(unravel_phi(p)))(phi_vec)
    return unravel_meta(-cross.T @ torch.linalg.solve(hess, g))  # type: ignore[no-any-return]


def lbfgs(parameters: Any, closure_loss: Callable[[], torch.Tensor]) -> None:
    """Fit to float64 precision (any inner loop will do; this one is deterministic)."""
    params = list(parameters)
    optimizer = torch.optim.LBFGS(
        params,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=0.0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = closure_loss()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------------ ridge


class Ridge(fi.nn.ImplicitMetaGradientModule):
    """Objective only: the optimality is its gradient, the linear solver CG by default."""

    def __init__(self, lam: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.zeros(dim, dtype=D))

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((X @ self.w - y) ** 2).sum() + 0.5 * self.lam * (self.w**2).sum()

    def solve(self, X: torch.Tensor, y: torch.Tensor) -> Ridge:
        lbfgs(self.parameters(), lambda: self.objective(X, y))
        return self


def ridge_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    X = torch.randn(12, 4, generator=g, dtype=D)
    y = torch.randn(12, generator=g, dtype=D)
    Xv = torch.randn(6, 4, generator=g, dtype=D)
    yv = torch.randn(6, generator=g, dtype=D)
    return X, y, Xv, yv


def ridge_hypergradient(lam: float, X: torch.Tensor, y: torch.Tensor, Xv: Any, yv: Any) -> Any:
    """Closed form: w* = A^{-1} X^T y, A = X^T X + lam I; dL/dlam = -g^T A^{-1} w*."""
    A = X.T @ X + lam * torch.eye(X.shape[1], dtype=D)
    w = torch.linalg.solve(A, X.T @ y)
    g = Xv.T @ (Xv @ w - yv)
    return w, -g @ torch.linalg.solve(A, w)


def test_ridge_matches_closed_form_hypergradient() -> None:
    X, y, Xv, yv = ridge_data()
    lam = torch.tensor(0.7, dtype=D, requires_grad=True)
    model = Ridge(lam, 4)
    assert model.solve(X, y) is model  # solve's return value passes through
    w_ref, grad_ref = ridge_hypergradient(0.7, X, y, Xv, yv)
    torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-9, atol=1e-10)
    (0.5 * ((Xv @ model.w - yv) ** 2).sum()).backward()  # type: ignore[no-untyped-call]
    assert lam.grad is not None
    torch.testing.assert_close(lam.grad, grad_ref, rtol=1e-8, atol=1e-10)


def test_parameters_are_inner_only_and_meta_is_separate() -> None:
    lam = torch.tensor(1.0, dtype=D, requires_grad=True)
    model = Ridge(lam, 3)
    assert [n for n, _ in model.named_parameters()] == ["w"]
    assert [n for n, _ in model.named_meta_parameters()] == ["lam"]
    assert model.lam is lam
    assert "lam" not in model.state_dict()


def test_solve_detaches_meta_parameters_inside_the_inner_loop() -> None:
    # The inner loop calls loss.backward() without inputs=: meta.grad must stay untouched.
    X, y, _, _ = ridge_data()
    lam = torch.tensor(0.7, dtype=D, requires_grad=True)
    Ridge(lam, 4).solve(X, y)
    assert lam.grad is None


def test_data_that_requires_grad_gets_implicit_gradients() -> None:
    # Dataset distillation: the training data itself is what the outer loop learns.
    X, y, Xv, yv = ridge_data()
    X = X.clone().requires_grad_()
    model = Ridge(torch.tensor(0.7, dtype=D, requires_grad=True), 4)
    model.solve(X, y)
    (0.5 * ((Xv @ model.w - yv) ** 2).sum()).backward()  # type: ignore[no-untyped-call]

    def outer_of_X(Xd: torch.Tensor) -> torch.Tensor:
        A = Xd.T @ Xd + 0.7 * torch.eye(4, dtype=D)
        w = torch.linalg.solve(A, Xd.T @ y)
        value: torch.Tensor = 0.5 * ((Xv @ w - yv) ** 2).sum()
        return value

    assert X.grad is not None
    torch.testing.assert_close(
        X.grad, torch.func.grad(outer_of_X)(X.detach()), rtol=1e-7, atol=1e-9
    )


# ------------------------------------------------------------------- iMAML proximal MLP

LAM = 2.0


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).to(D)


class Proximal(fi.nn.ImplicitMetaGradientModule, solve=fi.CG(maxiter=200)):
    """iMAML: task loss + lam/2 ||phi - theta||^2, theta the meta-network's parameters."""

    def __init__(self, meta_net: nn.Module, lam: float) -> None:
        super().__init__()
        self.meta_net = meta_net
        self.net = copy.deepcopy(meta_net)  # starts at theta; inner parameters phi
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prox = sum(
            ((p - q) ** 2).sum()
            for p, q in zip(self.parameters(), self.meta_parameters(), strict=True)
        )
        loss: torch.Tensor = ((self(x) - y) ** 2).mean() + 0.5 * self.lam * prox
        return loss

    def solve(self, x: torch.Tensor, y: torch.Tensor) -> None:
        lbfgs(self.parameters(), lambda: self.objective(x, y))


def task(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    x, xq = torch.randn(8, 2, generator=g, dtype=D), torch.randn(8, 2, generator=g, dtype=D)
    a = torch.randn(2, 1, generator=g, dtype=D)
    return x, torch.sin(x @ a), xq, torch.sin(xq @ a)


def proximal_objective(template: nn.Module) -> Callable[..., torch.Tensor]:
    def objective(phi: dict[str, Any], theta: dict[str, Any], x: Any, y: Any) -> torch.Tensor:
        prox = sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
        pred: torch.Tensor = functional_call(template, phi, (x,))
        value: torch.Tensor = ((pred - y) ** 2).mean() + 0.5 * LAM * prox
        return value

    return objective


def test_imaml_meta_gradient_matches_implicit_root_dense_and_unrolled() -> None:
    meta_net = mlp(0)
    x, y, xq, yq = task(1)
    inner = Proximal(meta_net, LAM)
    inner.solve(x, y)
    ((inner(xq) - yq) ** 2).mean().backward()
    shell = {n: p.grad.clone() for n, p in meta_net.named_parameters()}  # type: ignore[union-attr]

    template = copy.deepcopy(meta_net).requires_grad_(False)
    objective = proximal_objective(template)
    theta = {n: p.detach().clone().requires_grad_() for n, p in meta_net.named_parameters()}
    phi_star = {n: p.detach() for n, p in inner.net.named_parameters()}

    def outer(phi: dict[str, Any]) -> torch.Tensor:
        pred: torch.Tensor = functional_call(template, phi, (xq,))
        return ((pred - yq) ** 2).mean()

    # 1. the functional core, on the same solution
    def stationarity(phi: Any, theta: Any, x: Any, y: Any) -> Any:
        return torch.func.grad(objective)(phi, theta, x, y)

    @fi.implicit_root(stationarity, solve=fi.CG(maxiter=200))
    def solver(init: Any, theta: Any, x: Any, y: Any) -> Any:
        return {k: v.clone() for k, v in phi_star.items()}

    functional = torch.autograd.grad(outer(solver(phi_star, theta, x, y)), list(theta.values()))
    for (name, g_shell), g_func in zip(shell.items(), functional, strict=True):
        torch.testing.assert_close(g_shell, g_func, rtol=1e-7, atol=1e-10, msg=name)

    # 2. dense float64 linear algebra
    dense = dense_meta_grad(objective_xy(objective, x, y), outer, phi_star, theta)
    for name, g_shell in shell.items():
        torch.testing.assert_close(g_shell, dense[name], rtol=1e-7, atol=1e-10, msg=name)

    # 3. unrolled gradient descent, run to convergence and differentiated through
    step = 1.0 / (LAM + 4.0)
    phi = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    for _ in range(300):
        g = torch.autograd.grad(objective(phi, theta, x, y), list(phi.values()), create_graph=True)
        phi = {k: v - step * gk for (k, v), gk in zip(phi.items(), g, strict=True)}
    unrolled = torch.autograd.grad(outer(phi), list(theta.values()))
    for (name, g_shell), g_unrolled in zip(shell.items(), unrolled, strict=True):
        torch.testing.assert_close(g_shell, g_unrolled, rtol=1e-6, atol=1e-9, msg=name)


def objective_xy(objective: Callable[..., torch.Tensor], x: Any, y: Any) -> Any:
    return lambda phi, theta: objective(phi, theta, x, y)


def test_functional_bridge_gives_per_task_meta_gradients_under_vmap() -> None:
    meta_net = mlp(0)
    tasks = [task(s) for s in (1, 2, 3)]
    xs, ys, xqs, yqs = (torch.stack(t) for t in zip(*tasks, strict=True))

    # Loop over tasks with the stateful module (the reference).
    looped = []
    for x, y, xq, yq in tasks:
        meta_net.zero_grad()
        inner = Proximal(meta_net, LAM)
        inner.solve(x, y)
        ((inner(xq) - yq) ** 2).mean().backward()
        looped.append({n: p.grad.clone() for n, p in meta_net.named_parameters()})  # type: ignore[union-attr]

    f = Proximal(meta_net, LAM).functional()
    assert f.objective is not None
    objective = f.objective
    meta = {k: v.detach() for k, v in f.meta.items()}
    method = fi.Newton(solve=fi.CG(maxiter=200, on_failure="ignore"), maxiter=100)

    def task_meta_loss(meta: Any, x: Any, y: Any, xq: Any, yq: Any) -> torch.Tensor:
        inner = {"net." + k[len("meta_net.") :]: v for k, v in meta.items()}  # start at theta
        phi = fi.minimize(objective, inner, meta, x, y, method=method, solve=fi.CG()).value
        pred: torch.Tensor = f.forward(phi, meta, xq)
        value: torch.Tensor = ((pred - yq) ** 2).mean()
        return value

    batched = torch.func.vmap(torch.func.grad(task_meta_loss), (None, 0, 0, 0, 0))(
        meta, xs, ys, xqs, yqs
    )
    for t, ref in enumerate(looped):
        for name, g in ref.items():
            torch.testing.assert_close(batched["meta_net." + name][t], g, rtol=1e-6, atol=1e-9)


def test_functional_bridge_leaves_the_module_untouched() -> None:
    lam = torch.tensor(0.5, dtype=D, requires_grad=True)
    model = Ridge(lam, 2)
    f = model.functional()
    X, y = torch.eye(2, dtype=D), torch.ones(2, dtype=D)
    value = f.optimality({"w": torch.ones(2, dtype=D)}, {"lam": lam.detach()}, X, y)
    torch.testing.assert_close(value["w"], torch.full((2,), 0.5, dtype=D))  # (w - y) + lam w
    assert torch.equal(model.w, torch.zeros(2, dtype=D))
    assert f.inner["w"] is not model.w
    assert f.meta["lam"] is lam
    assert "Ridge" in repr(f.objective)


# ---------------------------------------------------------------- user-given optimality


class FixedPointLayer(fi.nn.ImplicitMetaGradientModule):
    """Optimality given directly: z = tanh(W z + x) as a residual (GMRES by default)."""

    def __init__(self, W: torch.Tensor) -> None:
        super().__init__()
        self.W = W
        self.z = nn.Parameter(torch.zeros(3, dtype=D))

    def optimality(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.z - torch.tanh(self.W @ self.z + x),)

    def solve(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            for _ in range(200):
                self.z.copy_(torch.tanh(self.W @ self.z + x))


def test_user_optimality_fixed_point_matches_dense_reference() -> None:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    W = (0.3 * torch.randn(3, 3, generator=g, dtype=D)).requires_grad_()
    x = torch.randn(3, generator=g, dtype=D)
    layer = FixedPointLayer(W)
    layer.solve(x)
    layer.z.sum().backward()  # type: ignore[no-untyped-call]
    z = layer.z.detach()
    # dz/dW from (I - J) dz = diag(1 - tanh^2) dW z, J = diag(1 - tanh^2) W
    s = 1 - torch.tanh(W.detach() @ z + x) ** 2
    A = torch.eye(3, dtype=D) - s[:, None] * W.detach()
    u = torch.linalg.solve(A.T, torch.ones(3, dtype=D))
    torch.testing.assert_close(W.grad, (u * s)[:, None] * z[None, :], rtol=1e-8, atol=1e-10)


def test_derived_optimality_is_callable_like_torchopt() -> None:
    X, y, _, _ = ridge_data()
    model = Ridge(torch.tensor(0.7, dtype=D, requires_grad=True), 4)
    model.solve(X, y)
    (residual,) = model.optimality(X, y)
    assert residual.shape == (4,)
    assert residual.abs().max() < 1e-9


# ------------------------------------------------------------- inner loops and options


class NewtonRidge(Ridge):
    """The inner loop is the library's own solver, run on the functional view."""

    def solve(self, X: torch.Tensor, y: torch.Tensor) -> Ridge:
        f = self.functional()
        assert f.objective is not None
        solution = fi.minimize(f.objective, f.inner, f.meta, X, y, implicit=False).value
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(solution[name])
        return self


def test_inner_solver_inside_solve() -> None:
    X, y, Xv, yv = ridge_data()
    lam = torch.tensor(0.7, dtype=D, requires_grad=True)
    model = NewtonRidge(lam, 4)
    model.solve(X, y)
    (0.5 * ((Xv @ model.w - yv) ** 2).sum()).backward()  # type: ignore[no-untyped-call]
    w_ref, grad_ref = ridge_hypergradient(0.7, X, y, Xv, yv)
    torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(lam.grad, grad_ref, rtol=1e-8, atol=1e-10)


def test_second_derivatives_through_the_shell() -> None:
    # d^2 L / d lam^2 of the outer loss, by double backward through the implicit rule.
    X, y, Xv, yv = ridge_data()
    lam = torch.tensor(0.7, dtype=D, requires_grad=True)
    model = NewtonRidge(lam, 4)
    model.solve(X, y)
    (g,) = torch.autograd.grad(0.5 * ((Xv @ model.w - yv) ** 2).sum(), lam, create_graph=True)
    (h,) = torch.autograd.grad(g, lam)

    def outer(lam: torch.Tensor) -> torch.Tensor:
        w = torch.linalg.solve(X.T @ X + lam * torch.eye(4, dtype=D), X.T @ y)
        value: torch.Tensor = 0.5 * ((Xv @ w - yv) ** 2).sum()
        return value

    hessian = torch.func.jacrev(torch.func.grad(outer))(lam.detach())  # reverse-over-reverse
    torch.testing.assert_close(h, hessian, rtol=1e-7, atol=1e-9)


class Weighted(fi.nn.ImplicitMetaGradientModule):
    """Keyword data, and a frozen inner parameter (requires_grad=False: held fixed)."""

    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.zeros(3, dtype=D))
        self.offset = nn.Parameter(torch.ones(3, dtype=D), requires_grad=False)

    def objective(self, y: torch.Tensor, *, weight: torch.Tensor) -> torch.Tensor:
        r = self.w + self.offset - y
        return 0.5 * (weight * r**2).sum() + 0.5 * self.lam * (self.w**2).sum()

    def solve(self, y: torch.Tensor, *, weight: torch.Tensor) -> None:
        with torch.no_grad():
            self.w.copy_(weight * (y - self.offset) / (weight + self.lam))


def test_keyword_data_and_frozen_inner_parameters() -> None:
    lam = torch.tensor(0.5, dtype=D, requires_grad=True)
    weight = torch.tensor([1.0, 2.0, 3.0], dtype=D, requires_grad=True)
    y = torch.tensor([2.0, -1.0, 4.0], dtype=D)
    model = Weighted(lam)
    model.solve(y, weight=weight)
    assert model.offset.grad_fn is None  # frozen: not replaced
    model.w.sum().backward()  # type: ignore[no-untyped-call]

    def closed(lam: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (weight * (y - 1) / (weight + lam)).sum()

    g_lam, g_weight = torch.func.grad(closed, argnums=(0, 1))(lam.detach(), weight.detach())
    torch.testing.assert_close(lam.grad, g_lam, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(weight.grad, g_weight, rtol=1e-9, atol=1e-12)


class Dropout(fi.nn.ImplicitMetaGradientModule):
    """The objective depends on the training flag: the derivative uses the flag of solve."""

    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.zeros(2, dtype=D))

    def objective(self, y: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if self.training else 3.0
        return 0.5 * scale * ((self.w - y) ** 2).sum() + 0.5 * self.lam * (self.w**2).sum()

    def solve(self, y: torch.Tensor) -> None:
        scale = 1.0 if self.training else 3.0
        with torch.no_grad():
            self.w.copy_(scale * y / (scale + self.lam))


def test_mode_changes_after_solve_do_not_change_the_derivative() -> None:
    y = torch.tensor([1.0, 2.0], dtype=D)
    lam = torch.tensor(0.5, dtype=D, requires_grad=True)
    model = Dropout(lam)
    model.solve(y)  # training mode: w* = y / (1 + lam)
    model.eval()  # e.g. to evaluate the outer loss; the backward pass still uses solve's mode
    model.w.sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(lam.grad, -(y / 1.5**2).sum())


def test_module_path_composes_with_torch_func_grad() -> None:
    # With a solve that only writes the parameters, the module itself works under grad.
    X, y, Xv, yv = ridge_data()

    class Closed(Ridge):
        def solve(self, X: torch.Tensor, y: torch.Tensor) -> Ridge:
            with torch.no_grad():
                A = X.T @ X + self.lam * torch.eye(4, dtype=D)
                self.w.copy_(torch.linalg.solve(A, X.T @ y))
            return self

    def outer(lam: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = Closed(lam, 4).solve(X, y).w
        return 0.5 * ((Xv @ w - yv) ** 2).sum()

    grad = torch.func.grad(outer)(torch.tensor(0.7, dtype=D))
    torch.testing.assert_close(grad, ridge_hypergradient(0.7, X, y, Xv, yv)[1], rtol=1e-9, atol=0)
