"""The iMAML benchmark problem: sine-wave regression tasks and an MLP 1-40-40-1.

Tasks (as in MAML's regression experiment): ``y = A sin(x - p)`` with amplitude
``A ~ U[0.1, 5]``, phase ``p ~ U[0, pi]``, inputs ``x ~ U[-5, 5]``; 10 support and 10 query
points per task. The MLP has tanh hidden layers: smooth, so the inner optimality condition has
the Jacobian the implicit function theorem needs.

Inner problem (one task, support set S), with the meta-parameters ``theta`` as prior:

    phi*(theta) = argmin_phi  MSE(phi; S) + lam/2 ||phi - theta||^2,

approximately solved by ``INNER_STEPS`` gradient-descent steps started at ``theta``. The
meta-gradient of ``MSE(phi*; Q)`` applies ``(H + lam I)^{-1}`` with ``CG_STEPS`` conjugate-
gradient steps (``H`` the Hessian of the support loss), in two ways:

- eager: ``fi.implicit_root`` attaches the rule and ``torch.func.grad`` differentiates it;
- plain operations: ``fi.hypergradient``, which ``torch.compile(fullgraph=True)`` compiles
  whole, also under ``vmap`` over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vmap

import funcimplicit as fi

__all__ = [
    "CG_STEPS",
    "INNER_STEPS",
    "Params",
    "Tasks",
    "compiled_meta_gradients",
    "hyper_meta_gradient",
    "hyper_meta_gradients_vmap",
    "init_params",
    "inner_loss",
    "inner_solve",
    "meta_gradient",
    "meta_gradients_loop",
    "meta_gradients_vmap",
    "meta_loss",
    "optimality",
    "sample_tasks",
]

Params = dict[str, Tensor]
Tasks = tuple[Tensor, Tensor, Tensor, Tensor]  # support x, support y, query x, query y

INNER_STEPS = 20
CG_STEPS = 10
# With lam = 2 the inner Hessian H + lam I of some tasks is indefinite and 20 steps leave
# gradients of norm ~0.9: the float32 meta-gradient then differs from the float64 one by ~80 %.
# lam = 10 makes it positive definite (eigenvalues ~[8, 45]); 20 steps of 0.04 reach inner
# gradient norms < 0.01 and float32 agrees with float64 to ~1e-5 (measured).
LAM = 10.0  # proximal strength lam
INNER_LR = 0.04  # gradient-descent step on the inner objective
SHOTS, QUERIES, HIDDEN = 10, 10, 40


def init_params(seed: int, device: torch.device | str = "cpu") -> Params:
    """Meta-parameters ``theta`` of the MLP 1-40-40-1 (float32, PyTorch's default init)."""
    gen = torch.Generator().manual_seed(seed)

    def linear(fan_in: int, fan_out: int) -> tuple[Tensor, Tensor]:
        bound = 1 / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
        return w.to(device), b.to(device)

    (w1, b1), (w2, b2), (w3, b3) = linear(1, HIDDEN), linear(HIDDEN, HIDDEN), linear(HIDDEN, 1)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}


def sample_tasks(n_tasks: int, seed: int, device: torch.device | str = "cpu") -> Tasks:
    """``n_tasks`` sine-wave tasks: support and query points, with a leading task dimension."""
    gen = torch.Generator().manual_seed(seed)
    amplitude = torch.rand(n_tasks, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(n_tasks, 1, generator=gen) * math.pi
    x = torch.rand(n_tasks, SHOTS + QUERIES, generator=gen) * 10 - 5
    y = amplitude * torch.sin(x - phase)
    x, y = x.unsqueeze(-1).to(device), y.unsqueeze(-1).to(device)
    return x[:, :SHOTS], y[:, :SHOTS], x[:, SHOTS:], y[:, SHOTS:]


def net(p: Params, x: Tensor) -> Tensor:
    h = torch.tanh(x @ p["w1"].T + p["b1"])
    h = torch.tanh(h @ p["w2"].T + p["b2"])
    return h @ p["w3"].T + p["b3"]


def meta_loss(phi: Params, xq: Tensor, yq: Tensor) -> Tensor:
    """The outer loss of one task: mean squared error on its query set."""
    return (net(phi, xq) - yq).square().mean()


def inner_loss(phi: Params, theta: Params, xs: Tensor, ys: Tensor) -> Tensor:
    """``MSE(phi; S) + lam/2 ||phi - theta||^2``."""
    prox = sum((phi[k] - theta[k]).square().sum() for k in phi)
    return (net(phi, xs) - ys).square().mean() + 0.5 * LAM * prox


def optimality(phi: Params, theta: Params, xs: Tensor, ys: Tensor) -> Params:
    """The inner stationarity condition ``grad_phi inner_loss = 0``."""
    out: Params = grad(inner_loss)(phi, theta, xs, ys)
    return out


def inner_solve(theta: Params, xs: Tensor, ys: Tensor) -> Params:
    """``INNER_STEPS`` steps of gradient descent on the inner objective, from ``theta``."""
    phi = dict(theta)
    for _ in range(INNER_STEPS):
        g = optimality(phi, theta, xs, ys)
        phi = {k: phi[k] - INNER_LR * g[k] for k in phi}
    return phi


def _cg() -> fi.CG:
    # A fixed budget of CG steps; the inner problem is solved approximately, so the default
    # float32 tolerance is often not met within it: that is the benchmark's setting.
    return fi.CG(maxiter=CG_STEPS, on_failure="ignore")


@fi.implicit_root(optimality, argnums=1, solve=_cg())
def _adapted(init: Params, theta: Params, xs: Tensor, ys: Tensor) -> Params:
    return inner_solve(theta, xs, ys)


def meta_gradient(theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Params:
    """One task's meta-gradient: ``fi.implicit_root`` differentiated by ``torch.func.grad``."""

    def task_meta_loss(theta: Params) -> Tensor:
        return meta_loss(_adapted(theta, theta, xs, ys), xq, yq)

    out: Params = grad(task_meta_loss)(theta)
    return out


def hyper_meta_gradient(theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Params:
    """The same meta-gradient with ``fi.hypergradient`` (plain operations)."""
    phi = inner_solve(theta, xs, ys)
    out: Params = fi.hypergradient(
        lambda phi, theta, xs, ys: meta_loss(phi, xq, yq),
        optimality,
        phi,
        theta,
        xs,
        ys,
        solve=_cg(),
    ).grad
    return out


def _mean(per_task: Params) -> Params:
    return {k: v.mean(0) for k, v in per_task.items()}


def meta_gradients_loop(theta: Params, tasks: Tasks) -> Params:
    """Mean meta-gradient over tasks, one task at a time (a Python loop)."""
    grads = [meta_gradient(theta, *task) for task in zip(*tasks, strict=True)]
    return {k: torch.stack([g[k] for g in grads]).mean(0) for k in theta}


def meta_gradients_vmap(theta: Params, tasks: Tasks) -> Params:
    """Mean meta-gradient over tasks, batched by ``torch.func.vmap``."""
    return _mean(vmap(meta_gradient, in_dims=(None, 0, 0, 0, 0))(theta, *tasks))


def hyper_meta_gradients_vmap(theta: Params, tasks: Tasks) -> Params:
    """:func:`meta_gradients_vmap` with ``fi.hypergradient``: compiles as one graph."""
    return _mean(vmap(hyper_meta_gradient, in_dims=(None, 0, 0, 0, 0))(theta, *tasks))


def compiled_meta_gradients(
    fullgraph: bool = True, backend: str = "inductor"
) -> Callable[[Params, Tasks], Params]:
    """``torch.compile`` of :func:`hyper_meta_gradients_vmap` (compiles on first call)."""
    compiled: Callable[[Params, Tasks], Params] = torch.compile(
        hyper_meta_gradients_vmap, fullgraph=fullgraph, backend=backend
    )
    return compiled
