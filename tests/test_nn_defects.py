"""Regression tests: each known defect of TorchOpt's ``ImplicitMetaGradientModule`` is absent.

Eval-mode meta-modules, pytree meta-parameters, subclasses of concrete subclasses, buffers
(BatchNorm running statistics), repeated ``solve``, reference cycles, per-call classes.
"""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import funcimplicit as fi

D = torch.float64


def data(seed: int = 0, n: int = 10, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D), torch.randn(n, generator=g, dtype=D)


def fit(parameters: Any, loss: Callable[[], torch.Tensor]) -> None:
    params = list(parameters)
    optimizer = torch.optim.LBFGS(
        params,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()  # type: ignore[no-untyped-call]
        return value

    optimizer.step(closure)  # type: ignore[no-untyped-call]


def dense_meta_grad(objective: Any, outer: Any, phi: torch.Tensor, meta: torch.Tensor) -> Any:
    """``-B^T H^{-1} grad outer`` for flat vectors, from dense float64 Jacobians."""
    grad_phi = torch.func.grad(objective, argnums=0)
    hess = torch.func.jacrev(grad_phi, argnums=0)(phi, meta)
    cross = torch.func.jacrev(grad_phi, argnums=1)(phi, meta)
    return -cross.T @ torch.linalg.solve(hess, torch.func.grad(outer)(phi))


# ----------------------------------------------------------- meta-modules in eval mode


class Head(fi.nn.ImplicitMetaGradientModule):
    """A linear head on a meta-learned feature extractor."""

    def __init__(self, body: nn.Module, lam: float = 0.5) -> None:
        super().__init__()
        self.body = body
        self.w = nn.Parameter(torch.zeros(4, dtype=D))
        self.lam = lam

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = self.body(x) @ self.w - y
        loss: torch.Tensor = 0.5 * (r**2).mean() + 0.5 * self.lam * (self.w**2).sum()
        return loss

    def solve(self, x: torch.Tensor, y: torch.Tensor) -> None:
        fit(self.parameters(), lambda: self.objective(x, y))


def head_reference(body: nn.Module, w: torch.Tensor, x: Any, y: Any, lam: float = 0.5) -> Any:
    names = [n for n, _ in body.named_parameters()]
    template = copy.deepcopy(body).requires_grad_(False)
    theta = torch.cat([p.detach().reshape(-1) for p in body.parameters()])
    shapes = [p.shape for p in body.parameters()]

    def unravel(v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, [s.numel() for s in shapes])
        return {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}

    def objective(w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        r = functional_call(template, unravel(m), (x,)) @ w - y
        loss: torch.Tensor = 0.5 * (r**2).mean() + 0.5 * lam * (w**2).sum()
        return loss

    return unravel(dense_meta_grad(objective, lambda w: w.sum(), w.detach(), theta))


def test_meta_module_in_eval_mode_is_still_a_meta_module() -> None:
    body = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).to(D).eval()
    head = Head(body)
    assert [n for n, _ in head.named_parameters()] == ["w"]
    assert [n for n, _ in head.named_meta_parameters()] == ["body.0.weight", "body.0.bias"]
    x, y = data()
    head.solve(x, y)
    head.w.sum().backward()  # type: ignore[no-untyped-call]
    ref = head_reference(body, head.w, x, y)
    for name, p in body.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-7, atol=1e-10)
    assert not body.training  # the shell does not change the meta-module's mode


# ---------------------------------------------------------- pytree meta-parameters


class Weighted(fi.nn.ImplicitMetaGradientModule):
    """Meta-parameters in a dict (with a nested list) and a list."""

    def __init__(self, hyper: dict[str, Any], shifts: list[torch.Tensor]) -> None:
        super().__init__()
        self.hyper = hyper
        self.shifts = shifts
        self.x = nn.Parameter(torch.zeros(2, dtype=D))

    def objective(self) -> torch.Tensor:
        scale, (a, b) = self.hyper["scale"], self.hyper["pair"]
        target = a * self.shifts[0] + b * self.shifts[1]
        loss: torch.Tensor = 0.5 * scale * ((self.x - target) ** 2).sum() + 0.5 * (self.x**2).sum()
        return loss

    def solve(self) -> None:
        fit(self.parameters(), self.objective)


def test_pytree_meta_parameters_are_registered_and_differentiated() -> None:
    scale, a, b = (torch.tensor(v, dtype=D, requires_grad=True) for v in (2.0, 0.5, -1.0))
    s0 = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    s1 = torch.tensor([-1.0, 3.0], dtype=D, requires_grad=True)
    model = Weighted({"scale": scale, "pair": [a, b], "note": "kept"}, [s0, s1])
    names = [n for n, _ in model.named_meta_parameters()]
    assert names == ["hyper.scale", "hyper.pair.0", "hyper.pair.1", "shifts.0", "shifts.1"]
    assert model.hyper["note"] == "kept"
    assert model.hyper["pair"][0] is a
    model.solve()
    model.x.sum().backward()  # type: ignore[no-untyped-call]
    # x* = scale t / (scale + 1), t = a s0 + b s1
    leaves = [scale, a, b, s0, s1]

    def closed(scale: Any, a: Any, b: Any, s0: Any, s1: Any) -> Any:
        return (scale * (a * s0 + b * s1) / (scale + 1)).sum()

    expected = torch.func.grad(closed, argnums=(0, 1, 2, 3, 4))(*[v.detach() for v in leaves])
    for leaf, want in zip(leaves, expected, strict=True):
        torch.testing.assert_close(leaf.grad, want, rtol=1e-8, atol=1e-10)


class AnyTree(fi.nn.ImplicitMetaGradientModule):
    def __init__(self, tree: Any) -> None:
        super().__init__()
        self.tree = tree
        self.x = nn.Parameter(torch.zeros((), dtype=D))

    def objective(self) -> torch.Tensor:
        total = sum(optree.tree_leaves(self.tree, namespace=""))
        return 0.5 * (self.x - total) ** 2  # type: ignore[no-any-return]

    def solve(self) -> None:
        with torch.no_grad():
            self.x.copy_(sum(optree.tree_leaves(self.tree, namespace="")))


def scalar() -> st.SearchStrategy[torch.Tensor]:
    return st.floats(-2, 2).map(lambda v: torch.tensor(v, dtype=D, requires_grad=True))


trees = st.recursive(
    scalar(),
    lambda children: (
        st.lists(children, min_size=1, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "b", "lam", "mu"]), children, min_size=1, max_size=3
        )
    ),
    max_leaves=6,
).filter(lambda t: not isinstance(t, torch.Tensor))


@given(trees)
def test_any_pytree_of_meta_parameters_is_registered(tree: Any) -> None:
    leaves = optree.tree_leaves(tree, namespace="")
    model = AnyTree(tree)
    assert len(list(model.meta_parameters())) == len(leaves)
    assert optree.tree_structure(model.tree, namespace="") == optree.tree_structure(
        tree, namespace=""
    )
    model.solve()
    model.x.backward()  # type: ignore[no-untyped-call]  # x* = sum of the leaves: every gradient is 1
    assert all(leaf.grad is not None and float(leaf.grad) == 1.0 for leaf in leaves)


# --------------------------------------------------- subclass of a concrete subclass


class Ridge(fi.nn.ImplicitMetaGradientModule):
    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.zeros(3, dtype=D))

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((X @ self.w - y) ** 2).sum() + 0.5 * self.lam * (self.w**2).sum()

    def solve(self, X: torch.Tensor, y: torch.Tensor) -> str:
        with torch.no_grad():
            A = X.T @ X + self.lam * torch.eye(3, dtype=D)
            self.w.copy_(torch.linalg.solve(A, X.T @ y))
        return "ridge"


class PlainSubclass(Ridge):
    pass


class ScaledRidge(Ridge):
    """Overrides the objective (twice the loss: the same minimizer) and solve via super()."""

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 2 * super().objective(X, y)

    def solve(self, X: torch.Tensor, y: torch.Tensor) -> str:
        return "scaled " + super().solve(X, y)


class FurtherSubclass(ScaledRidge, solve=fi.GMRES()):
    pass


def ridge_grad(lam: float, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    A = X.T @ X + lam * torch.eye(3, dtype=D)
    w = torch.linalg.solve(A, X.T @ y)
    grad: torch.Tensor = -torch.linalg.solve(A, w).sum()  # d(sum w*)/dlam
    return grad


@pytest.mark.parametrize("cls", [Ridge, PlainSubclass, ScaledRidge, FurtherSubclass])
def test_subclasses_of_concrete_subclasses_work(cls: type[Ridge]) -> None:
    X, y = data()
    lam = torch.tensor(0.3, dtype=D, requires_grad=True)
    model = cls(lam)
    out = model.solve(X, y)
    assert out == ("ridge" if cls in (Ridge, PlainSubclass) else "scaled ridge")
    model.w.sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(lam.grad, ridge_grad(0.3, X, y), rtol=1e-9, atol=1e-12)
    # One ImplicitRoot node: super().solve() inside solve() attaches nothing of its own.
    assert type(model.w.grad_fn).__name__ == "_ImplicitRootFunctionBackward"
    assert model.w.grad_fn is not None


def test_class_keyword_is_inherited_and_overridable() -> None:
    assert Ridge.linear_solver is None
    assert isinstance(FurtherSubclass.linear_solver, fi.GMRES)

    class Child(FurtherSubclass):
        pass

    assert isinstance(Child.linear_solver, fi.GMRES)


# ------------------------------------------------------------------ buffers (BatchNorm)


class Normalized(fi.nn.ImplicitMetaGradientModule):
    """BatchNorm in the inner network and in a meta-module, both in training mode."""

    def __init__(self, features: nn.Module, lam: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.lam = lam
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
        self.net.to(D)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = self.net(self.features(x)).squeeze(-1)
        reg = sum((p**2).sum() for p in self.parameters())
        loss: torch.Tensor = ((pred - y) ** 2).mean() + 0.5 * self.lam * reg
        return loss

    def solve(self, x: torch.Tensor, y: torch.Tensor) -> None:
        fit(self.parameters(), lambda: self.objective(x, y))


def without_running_stats(module: nn.Module) -> nn.Module:
    """A copy whose BatchNorm layers use batch statistics and hold no buffers (pure)."""
    pure = copy.deepcopy(module).requires_grad_(False)
    for m in pure.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return pure


def test_buffers_do_not_break_the_optimality_and_are_left_alone() -> None:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).to(D)
    lam = torch.tensor(0.5, dtype=D, requires_grad=True)
    model = Normalized(features, lam)
    # Pure copies for the reference, taken before solve: afterwards the inner parameters are
    # outputs of the implicit rule, which (like any non-leaf tensor) cannot be deep-copied.
    net, feats = without_running_stats(model.net), without_running_stats(features)
    x, y = data(n=16)
    model.solve(x, y)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    meta_buffers = {n: b.clone() for n, b in features.named_buffers()}
    assert int(buffers["net.1.num_batches_tracked"]) > 0  # the inner loop did update them
    outer = model.net(features(x)).sum()
    buffers_after_forward = {n: b.clone() for n, b in model.named_buffers()}
    meta_after_forward = {n: b.clone() for n, b in features.named_buffers()}
    outer.backward()
    # The backward pass evaluated the optimality on copies: no buffer moved.
    for n, b in model.named_buffers():
        torch.testing.assert_close(b, buffers_after_forward[n], rtol=0, atol=0)
    for n, b in features.named_buffers():
        torch.testing.assert_close(b, meta_after_forward[n], rtol=0, atol=0)
    assert set(buffers) == set(buffers_after_forward)
    assert set(meta_buffers)

    # Reference: dense implicit derivative of pure copies (batch statistics, no buffers).
    names = [n for n, _ in model.net.named_parameters()]
    shapes = [p.shape for p in model.net.parameters()]
    fnames = [n for n, _ in features.named_parameters()]
    fshapes = [p.shape for p in features.parameters()]

    def split(v: torch.Tensor, names: list[str], shapes: list[Any]) -> dict[str, torch.Tensor]:
        parts = torch.split(v, [s.numel() for s in shapes])
        return {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}

    def objective(phi: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        feat = functional_call(feats, split(meta[1:], fnames, fshapes), (x,))
        pred = functional_call(net, split(phi, names, shapes), (feat,)).squeeze(-1)
        loss: torch.Tensor = ((pred - y) ** 2).mean() + 0.5 * meta[0] * (phi**2).sum()
        return loss

    phi = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    meta = torch.cat(
        [lam.detach().reshape(1)] + [p.detach().reshape(-1) for p in features.parameters()]
    )
    feat_eval = features(x).detach()  # the outer loss used the features as computed then

    def outer_fn(phi: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(net, split(phi, names, shapes), (feat_eval,))
        return out.sum()

    ref = dense_meta_grad(objective, outer_fn, phi, meta)
    torch.testing.assert_close(lam.grad, ref[0], rtol=1e-6, atol=1e-9)
    # the features also enter the outer loss directly; compare the implicit part only
    phi_now = split(phi, names, shapes)
    direct = torch.autograd.grad(
        functional_call(net, phi_now, (features(x),)).sum(), list(features.parameters())
    )
    pairs = zip(features.parameters(), direct, strict=True)
    got = torch.cat([(p.grad - g).reshape(-1) for p, g in pairs])  # type: ignore[operator]
    torch.testing.assert_close(got, ref[1:], rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------- repeated solves


class Tracked(Ridge):
    """An optimizer built once in __init__ must keep working across solves."""

    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__(lam)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.07)

    def solve(self, X: torch.Tensor, y: torch.Tensor) -> str:
        for _ in range(400):
            self.optimizer.zero_grad()
            self.objective(X, y).backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
        return "sgd"


def test_repeated_solve_calls_work_and_warm_start() -> None:
    X, y = data()
    lam = torch.tensor(0.3, dtype=D, requires_grad=True)
    model = Tracked(lam)
    leaf = model.w
    model.solve(X, y)
    first = model.w
    assert first is not leaf
    assert first.grad_fn is not None
    loss_first = first.sum()
    model.solve(X, y)  # the fitted leaf comes back (same optimizer), warm started
    second = model.w
    assert second is not first
    assert leaf.grad_fn is None
    torch.testing.assert_close(second.detach(), first.detach(), rtol=1e-10, atol=1e-12)
    second.sum().backward()  # type: ignore[no-untyped-call]
    loss_first.backward()  # type: ignore[no-untyped-call]  # the first graph survives the second solve's in-place updates
    torch.testing.assert_close(lam.grad, 2 * ridge_grad(0.3, X, y), rtol=1e-8, atol=1e-10)
    # Different data: the second solve really re-fits.
    X2, y2 = data(1)
    model.solve(X2, y2)
    lam.grad = None
    model.w.sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(lam.grad, ridge_grad(0.3, X2, y2), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------- no cycles, bounded memory


@contextmanager
def gc_disabled() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_no_reference_cycle_keeps_modules_alive() -> None:
    X, y = data()
    with gc_disabled():  # freed by reference counting alone: no cycle anywhere
        for _ in range(5):
            body = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).to(D)
            lam = torch.tensor(0.5, dtype=D, requires_grad=True)
            model = Head(body)
            model.register_meta_parameter("scale", lam)
            model.solve(X, y)
            loss = model.w.sum()
            node = model.w.grad_fn  # the implicit rule's node, and the snapshot it evaluates
            refs: list[weakref.ref[Any]] = [weakref.ref(model), weakref.ref(body)]
            refs.append(weakref.ref(node))
            refs.append(weakref.ref(node.problem.optimality_fn.snapshot))  # type: ignore[union-attr]
            del node
            del model  # the loss's graph does not keep the module alive ...
            assert refs[0]() is None
            loss.backward()  # type: ignore[no-untyped-call]  # ... and still differentiates after the module is gone
            assert body[0].weight.grad is not None
            del loss, body, lam
            assert [r() for r in refs] == [None] * 4


def test_repeated_construct_solve_backward_cycles_do_not_grow() -> None:
    X, y = data()
    body = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).to(D)

    def cycle() -> None:
        model = Head(body)
        model.solve(X, y)
        model.w.sum().backward()  # type: ignore[no-untyped-call]

    def live_modules() -> int:
        return sum(issubclass(type(o), nn.Module) for o in gc.get_objects())

    cycle()
    gc.collect()
    before = live_modules()
    with gc_disabled():
        for _ in range(10):
            cycle()
        assert live_modules() == before


def test_no_class_is_created_per_call() -> None:
    X, y = data()
    kinds = set()
    for seed in range(3):
        model = Ridge(torch.tensor(0.1 + seed, dtype=D, requires_grad=True))
        model.solve(X, y)
        kinds.add(type(model.w.grad_fn))
    assert len(kinds) == 1
    subclasses = len(torch.autograd.Function.__subclasses__())
    Ridge(torch.tensor(1.0, dtype=D, requires_grad=True)).solve(X, y)
    assert len(torch.autograd.Function.__subclasses__()) == subclasses


def test_meta_inputs_are_not_kept_after_construction() -> None:
    unused = torch.ones(3, dtype=D, requires_grad=True)
    ref = weakref.ref(unused)
    model = WithUnused(torch.tensor(1.0, dtype=D, requires_grad=True), unused)
    del unused
    assert ref() is None
    assert "_fi_inputs" not in model.__dict__


class WithUnused(Ridge):
    def __init__(self, lam: torch.Tensor, unused: torch.Tensor) -> None:
        super().__init__(lam)
