"""Pytrees through ``implicit_root`` / ``fixed_point``: argument structures, argnums subsets,
non-tensor leaves, data tensors, ``has_aux``, and the structure of the solution.

The generated problem: ``T(x, *args) = x + 0.1 x^3 - s(args)``, elementwise in ``x`` (3,), with
``s(args) = sum_k w_k * sum(tanh(leaf_k))`` over the tensor leaves ``leaf_k`` of all arguments in
flattening order. For ``L = c . x*``: ``dL/ds = c / (1 + 0.3 x*^2) =: u`` and
``dL/dleaf_k = (u . w_k) (1 - tanh(leaf_k)^2)``, the closed-form reference.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from implicit_problems import COUPLED, Pair, assert_close, outer_loss, ravel
from torch.func import grad

import funcimplicit as fi

F64 = torch.float64
C = (1.0, 2.0, -1.0)


class Marker:
    """A non-tensor leaf that must reach the callbacks as the very same object."""

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"Marker({self.tag})"


NT = collections.namedtuple("NT", ["first", "second"])


def _w(k: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.tensor([1.0, -0.5, 0.25], dtype=F64, device=device) * (0.5 + 0.3 * k)


def _tensor_leaves(args: Any) -> list[torch.Tensor]:
    return [leaf for leaf in optree.tree_leaves(args) if isinstance(leaf, torch.Tensor)]


def _forcing(args: Any) -> torch.Tensor:
    # Tensors made on the leaves' device: this runs inside backward passes too, which CUDA
    # runs on the autograd engine's own thread, where torch.set_default_device (thread-local,
    # as --device cuda sets it) does not hold.
    leaves = _tensor_leaves(args)
    device = leaves[0].device if leaves else None
    s = torch.zeros(3, dtype=F64, device=device)
    for k, leaf in enumerate(leaves):
        s = s + _w(k, device) * torch.tanh(leaf).sum()
    return s


def _newton(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    for _ in range(60):
        x = x - (x + 0.1 * x**3 - s) / (1 + 0.3 * x**2)
    return x


def _expected_grads(args: Any, x: torch.Tensor) -> list[torch.Tensor]:
    u = torch.tensor(C, dtype=F64) / (1 + 0.3 * x**2)
    return [
        (u @ _w(k)) * (1 - torch.tanh(leaf.detach()) ** 2)
        for k, leaf in enumerate(_tensor_leaves(args))
    ]


# --------------------------------------------------------------------------------------------
# Strategies


def _tensor(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    return st.integers(0, 10**6).map(
        lambda seed: (
            0.5
            * torch.randn(
                shape,
                dtype=F64,
                generator=torch.Generator(device=torch.get_default_device()).manual_seed(seed),
            )
        )
    )


_leaf = st.one_of(
    st.sampled_from([(), (2,), (2, 3)]).flatmap(_tensor),
    st.sampled_from([3, "tag", 0.5, None, True]),
    st.integers(0, 99).map(Marker),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3).map(tuple),
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from("abc"), children, max_size=3),
        st.tuples(children, children).map(lambda t: NT(*t)),
    )


_tree = st.recursive(_leaf, _containers, max_leaves=5)


@st.composite
def _case(draw: st.DrawFn) -> tuple[tuple[Any, ...], tuple[int, ...] | int | None, list[bool]]:
    args = tuple(draw(st.lists(_tree, min_size=1, max_size=3)))
    n = len(args)
    argnums = draw(
        st.one_of(
            st.none(),
            st.sets(st.integers(1, n), min_size=1).map(lambda s: tuple(sorted(s))),
            st.integers(1, n),
        )
    )
    count = len(_tensor_leaves(args))
    requires = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    return args, argnums, requires


def _with_requires_grad(args: Any, requires: list[bool]) -> Any:
    flags = iter(requires)
    return optree.tree_map(
        lambda leaf: (
            leaf.clone().requires_grad_(next(flags)) if isinstance(leaf, torch.Tensor) else leaf
        ),
        args,
    )


def _in_argnums(argnums: int | tuple[int, ...] | None, n: int) -> set[int]:
    if argnums is None:
        return set(range(n))
    items = (argnums,) if isinstance(argnums, int) else argnums
    return {k - 1 for k in items}


# --------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(_case())
def test_gradients_follow_argnums(case: tuple[Any, ...]) -> None:
    args, argnums, requires = case
    args = _with_requires_grad(args, requires)
    structure = optree.tree_structure(args)
    non_tensors = [leaf for leaf in optree.tree_leaves(args) if not isinstance(leaf, torch.Tensor)]
    seen: list[tuple[str, object, list[object]]] = []

    def record(where: str, received: Any) -> None:
        seen.append(
            (
                where,
                optree.tree_structure(received),
                [x for x in optree.tree_leaves(received) if not isinstance(x, torch.Tensor)],
            )
        )

    def optimality(x: torch.Tensor, *a: object) -> torch.Tensor:
        record("optimality_fn", a)
        return x + 0.1 * x**3 - _forcing(a)

    @fi.implicit_root(optimality, argnums=argnums, solve=fi.CG())
    def solver(init: torch.Tensor, *a: object) -> torch.Tensor:
        record("solver", a)
        for leaf in _tensor_leaves(a):
            assert not leaf.requires_grad, "the inner solver must see detached tensors"
        return _newton(init, _forcing(a))

    x = solver(torch.zeros(3, dtype=F64), *args)
    loss = torch.tensor(C, dtype=F64) @ x
    tensors = _tensor_leaves(args)
    differentiable = _in_argnums(argnums, len(args))
    owner = [k for k, a in enumerate(args) for leaf in _tensor_leaves((a,))]
    expected = _expected_grads(args, x.detach())
    wanted = [t.requires_grad and owner[i] in differentiable for i, t in enumerate(tensors)]
    assert x.requires_grad == any(wanted)
    if any(wanted):
        targets = [t for t in tensors if t.requires_grad]
        grads = iter(torch.autograd.grad(loss, targets, allow_unused=True))
        for i, t in enumerate(tensors):
            if not t.requires_grad:
                continue
            g = next(grads)
            if owner[i] in differentiable:
                assert g is not None
                assert_close(g, expected[i], tol=1e-10, what=f"gradient of leaf {i}")
            else:
                assert g is None, f"leaf {i} is outside argnums={argnums} but got a gradient"
    # Non-tensor leaves and containers reached every callback untouched.
    assert seen, "the callbacks never ran"
    for where, got_structure, got_leaves in seen:
        assert got_structure == structure, where
        assert len(got_leaves) == len(non_tensors)
        for a, b in zip(got_leaves, non_tensors, strict=True):
            assert a is b, f"{where} received {a!r} instead of the very object {b!r}"
    # The user's tensors were not touched.
    for t in tensors:
        assert t.grad is None


@settings(max_examples=15, deadline=None)
@given(_case())
def test_root_vjp_structure(case: tuple[Any, ...]) -> None:
    # root_vjp returns one pytree per argument, shaped like it, None at non-tensor leaves.
    args, _, _ = case

    def optimality(x: torch.Tensor, *a: object) -> torch.Tensor:
        return x + 0.1 * x**3 - _forcing(a)

    x = _newton(torch.zeros(3, dtype=F64), _forcing(args))
    grads = fi.root_vjp(optimality, x, args, torch.tensor(C, dtype=F64), solve=fi.CG())
    assert isinstance(grads, tuple)
    assert len(grads) == len(args)
    expected = iter(_expected_grads(args, x))
    for a, g in zip(args, grads, strict=True):
        flat_a, spec_a = optree.tree_flatten(a, none_is_leaf=True)
        flat_g, spec_g = optree.tree_flatten(g, none_is_leaf=True)
        assert spec_g == spec_a
        for leaf, gl in zip(flat_a, flat_g, strict=True):
            if isinstance(leaf, torch.Tensor):
                assert_close(gl, next(expected), tol=1e-10, what="root_vjp leaf")
            else:
                assert gl is None


_solution_leaf = st.sampled_from([(), (2,), (1, 3)])
_solution_tree = st.recursive(
    _solution_leaf,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("xyz"), children, min_size=1, max_size=3),
        st.tuples(children, children).map(lambda t: NT(*t)),
    ),
    max_leaves=4,
)


@settings(max_examples=15, deadline=None)
@given(_solution_tree, st.integers(0, 1000))
def test_solution_structure_preserved(shapes: Any, seed: int) -> None:
    # The solution has the structure of init; derivatives flow to every leaf (elementwise root
    # x + 0.1 x^3 = tanh(a) per leaf: dx/da = sech^2(a) / (1 + 0.3 x^2)).
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    is_shape = lambda s: isinstance(s, tuple) and all(isinstance(d, int) for d in s)  # noqa: E731
    a = optree.tree_map(
        lambda s: torch.randn(s, dtype=F64, generator=gen), shapes, is_leaf=is_shape
    )
    init = optree.tree_map(torch.zeros_like, a)

    def optimality(x: Any, a: Any) -> Any:
        return optree.tree_map(lambda xi, ai: xi + 0.1 * xi**3 - torch.tanh(ai), x, a)

    @fi.implicit_root(optimality)
    def solver(init: Any, a: Any) -> Any:
        return optree.tree_map(lambda xi, ai: _newton(xi, torch.tanh(ai)), init, a)

    x = solver(init, a)
    assert optree.tree_structure(x) == optree.tree_structure(init)
    assert type(x) is type(init)
    g = grad(lambda a: outer_loss(solver(init, a)))(a)
    x = optree.tree_map(torch.Tensor.detach, x)
    expected = optree.tree_map(
        lambda xi, ai: (
            (3 * torch.cos(3 * xi) + _loss_weight(x, xi) * xi)
            * (1 - torch.tanh(ai) ** 2)
            / (1 + 0.3 * xi**2)
        ),
        x,
        a,
    )
    assert_close(ravel(g), ravel(expected), tol=1e-10, what="per-leaf gradient")


def _loss_weight(tree: Any, leaf: torch.Tensor) -> float:
    # outer_loss weights leaf k by (0.5 + 0.25 k) * x^2, so d/dx = 2 (0.5 + 0.25 k) x.
    for k, candidate in enumerate(optree.tree_leaves(tree)):
        if candidate is leaf:
            return 2 * (0.5 + 0.25 * k)
    raise AssertionError("leaf not found")


# --------------------------------------------------------------------------------------------
# Explicit cases


def _pair_optimality(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x - a - 2 * b  # x* = a + 2 b


def _pair_solver(
    argnums: int | None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    @fi.implicit_root(_pair_optimality, argnums=argnums)
    def solver(init: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + 2 * b

    return solver


def test_same_tensor_twice_in_argnums_sums_contributions() -> None:
    t = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    x = _pair_solver(None)(torch.zeros(2, dtype=F64), t, t)
    (g,) = torch.autograd.grad(x.sum(), t)
    assert_close(g, torch.full((2,), 3.0, dtype=F64), tol=1e-12, what="d(a + 2b)/dt with a = b = t")


@pytest.mark.parametrize(("argnums", "expected"), [(1, 1.0), (2, 2.0)])
def test_same_tensor_in_and_outside_argnums(argnums: int, expected: float) -> None:
    # Only the occurrence inside argnums is differentiated; the other is a constant.
    t = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    x = _pair_solver(argnums)(torch.zeros(2, dtype=F64), t, t)
    (g,) = torch.autograd.grad(x.sum(), t)
    assert_close(g, torch.full((2,), expected, dtype=F64), tol=1e-12, what=f"argnums={argnums}")


def test_func_grad_only_through_argnums() -> None:
    # Under torch.func.grad, an argument outside argnums is a constant: zero gradient.
    a = torch.tensor([1.0, 2.0], dtype=F64)
    b = torch.tensor([0.5, -1.0], dtype=F64)
    solver = _pair_solver(2)
    ga, gb = grad(lambda a, b: solver(torch.zeros(2, dtype=F64), a, b).sum(), argnums=(0, 1))(a, b)
    assert_close(ga, torch.zeros(2, dtype=F64), tol=0.0, what="outside argnums")
    assert_close(gb, torch.full((2,), 2.0, dtype=F64), tol=1e-12, what="inside argnums")


def test_data_without_requires_grad() -> None:
    # Params require grad, data do not: the data get no .grad, the result still carries grad.
    lam = torch.tensor([0.7, 1.1, 0.9, 1.3], dtype=F64, requires_grad=True)
    X = torch.randn(
        12,
        4,
        dtype=F64,
        generator=torch.Generator(device=torch.get_default_device()).manual_seed(3),
    )
    y = torch.randn(
        12, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(4)
    )
    from implicit_problems import RIDGE

    w = RIDGE.solve(lam, (X, y))
    assert w.requires_grad
    outer_loss(w).backward()  # type: ignore[no-untyped-call]
    assert lam.grad is not None
    assert X.grad is None
    assert y.grad is None
    assert not X.requires_grad


def test_no_differentiable_input_gives_plain_tensor() -> None:
    from implicit_problems import RIDGE

    w = RIDGE.solve(*(RIDGE.params(0), RIDGE.data(0)))
    assert not w.requires_grad
    assert w.grad_fn is None


def test_has_aux_returns_aux_untouched() -> None:
    aux_object: dict[str, Any] = {
        "iterations": torch.tensor(7),
        "note": "converged",
        "marker": Marker(1),
    }

    @fi.implicit_root(_pair_optimality, has_aux=True)
    def solver(
        init: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return a + 2 * b, aux_object

    a = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    b = torch.tensor([0.5, -1.0], dtype=F64)
    x, aux = solver(torch.zeros(2, dtype=F64), a, b)
    assert aux is aux_object
    assert aux["iterations"] is aux_object["iterations"]
    assert not aux["iterations"].requires_grad
    (g,) = torch.autograd.grad(x.sum(), a)
    assert_close(g, torch.ones(2, dtype=F64), tol=1e-12, what="has_aux gradient")


def test_has_aux_under_func_grad() -> None:
    @fi.fixed_point(lambda z, a: 0.5 * z + a, has_aux=True)
    def solver(z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for _ in range(80):
            z = 0.5 * z + a
        return z, {"steps": torch.tensor(80)}

    def f(a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, aux = solver(torch.zeros(2, dtype=F64), a)
        return (z**2).sum(), aux

    a = torch.tensor([1.0, -3.0], dtype=F64)
    g, aux = grad(f, has_aux=True)(a)
    assert set(aux) == {"steps"}
    assert int(aux["steps"]) == 80
    assert_close(g, 2 * (2 * a) * 2, tol=1e-10, what="d sum((2a)^2)/da")


def test_namedtuple_solution_structure_preserved() -> None:
    params: Any
    params, data = COUPLED.params(0), COUPLED.data(0)
    params = optree.tree_map(lambda t: t.clone().requires_grad_(True), params)
    z = COUPLED.solve(params, data)
    assert type(z) is Pair
    assert z._fields == ("a", "b")
    assert z.a.shape == (2,)
    assert z.b.shape == (3,)
    # Each field carries derivatives, including the cross-terms from the coupling.
    ref = COUPLED.reference(optree.tree_map(torch.Tensor.detach, params), data)
    assert_close(z, ref, tol=1e-12, what="solution")
    (g_pa,) = torch.autograd.grad(z.b.sum(), params["p"][0])
    p_ref: Any = optree.tree_map(lambda t: t.detach().clone().requires_grad_(True), params)
    (g_ref,) = torch.autograd.grad(COUPLED.reference(p_ref, data).b.sum(), p_ref["p"][0])
    assert float(g_ref.abs().max()) > 0.05, "the leaves should be coupled"
    assert_close(g_pa, g_ref, tol=1e-10, what="d sum(b) / d p_a (coupling)")


def test_dict_solution_with_zero_dim_leaf() -> None:
    # Solution {"s": 0-d, "v": (2,)} with a coupled root: s = a0 + 0.5 sum(v), v = a1 - 0.2 s.
    def optimality(z: dict[str, torch.Tensor], a: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": z["s"] - a[0] - 0.5 * z["v"].sum(), "v": z["v"] - a[1:] + 0.2 * z["s"]}

    m = torch.tensor([[1.0, -0.5, -0.5], [0.2, 1.0, 0.0], [0.2, 0.0, 1.0]], dtype=F64)

    @fi.implicit_root(optimality, solve=fi.LU())
    def solver(init: dict[str, torch.Tensor], a: torch.Tensor) -> dict[str, torch.Tensor]:
        joint = torch.linalg.inv(m) @ a
        return {"s": joint[0], "v": joint[1:]}

    a = torch.tensor([1.0, 2.0, -1.0], dtype=F64, requires_grad=True)
    z = solver({"s": torch.zeros((), dtype=F64), "v": torch.zeros(2, dtype=F64)}, a)
    assert set(z) == {"s", "v"}
    assert z["s"].shape == ()
    (g,) = torch.autograd.grad(z["s"], a)
    assert_close(g, torch.linalg.inv(m)[0], tol=1e-12, what="d s / d a")
