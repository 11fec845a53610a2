"""Compaction of a ``vmap`` batch to its active elements (``funcimplicit._core.loop``).

Once at most 3/4 of a batch is active, the inner-method driver runs the rest of its loop on
the active rows only, under a fresh ``vmap``. Compaction must change nothing but the time:
every test compares each field of the result against the same solve with compaction switched
off (``loop.COMPACT = False``), the per-element iteration counts and statuses with each problem
solved alone, and the values with a dense float64 solve. Every test runs twice:

- ``batched-tail`` (``loop.COMPACT_ALONE = False``): a last active element runs as a batch of
  two copies; every field must be bit-identical (``torch.equal``) to the uncompacted solve.
- ``alone-tail`` (the default): the last active element (the last ``loop.ALONE_AT_MOST``,
  one after another) runs by itself, outside the ``vmap``.
  Counts and statuses must still be identical; values, residual norms and tolerances agree
  to 1e-12 of their scale only, because a matrix-vector product and a batched matrix product round
  differently in the last bits (the same difference as between a problem solved alone and
  in a batch, with or without compaction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.func import grad, vmap

import funcimplicit as fi
from funcimplicit._core import compat as _compat
from funcimplicit._core import loop as _loop

F64 = torch.float64
FIELDS = ("value", "iterations", "residual_norm", "tolerance", "converged", "status")


@pytest.fixture(autouse=True, params=[False, True], ids=["batched-tail", "alone-tail"])
def _compaction_on(request: pytest.FixtureRequest) -> Iterator[None]:
    saved = _loop.COMPACT, _loop.COMPACT_ALONE
    _loop.COMPACT, _loop.COMPACT_ALONE = True, request.param
    yield
    _loop.COMPACT, _loop.COMPACT_ALONE = saved


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def _record(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Patch the loop's compaction to record each attempt: ``True`` where it ran."""
    seen: list[bool] = []
    original = _loop.compacted

    def recorded(*args: Any) -> Any:
        out = original(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(_loop, "compacted", recorded)
    return seen


def _on_and_off(
    run: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, list[bool]]:
    """``run()`` with compaction, the attempts it made, and ``run()`` without compaction."""
    seen = _record(monkeypatch)
    compacted = run()
    attempts = list(seen)
    _loop.COMPACT = False
    try:
        plain = run()
    finally:
        _loop.COMPACT = True
    return compacted, plain, attempts


def _assert_identical(a: fi.Solution[Any], b: fi.Solution[Any]) -> None:
    """Bit-identical; with a tail run alone, the floating-point fields to 1e-12 (see above)."""
    for name in FIELDS:
        _assert_same(getattr(a, name), getattr(b, name), name)


def _assert_same(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if _loop.COMPACT_ALONE and x.is_floating_point():
        # to 1e-12 of the field's scale, at least 1 (the scale of every solution here):
        # Anderson's small least-squares solves amplify the last-bit differences (2e-14 on
        # entries of size 2, against a solve error of 5e-9), and a residual norm of 1e-10
        # moves by the rounding of x, not by its own last bit.
        scale = max(float(y.abs().max()), 1.0)
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12 * scale, msg=name)
    else:
        assert torch.equal(x, y), name


def _assert_as_alone(batched: fi.Solution[Any], singles: list[fi.Solution[Any]]) -> None:
    for i, single in enumerate(singles):
        assert int(batched.iterations[i]) == int(single.iterations), i
        assert int(batched.status[i]) == int(single.status), i
        torch.testing.assert_close(batched.value[i], single.value, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Uneven batches: four kinds of method on problems whose counts differ by 10x or more


def _affine(count: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` symmetric contractions ``J`` (radii 0.1 .. 0.95) and offsets ``c``."""
    g = torch.randn(count, n, n, dtype=F64, generator=_gen(0))
    g = (g + g.mT) / 2
    radii = torch.linspace(0.1, 0.95, count, dtype=F64)
    js = g / torch.linalg.matrix_norm(g, ord=2)[:, None, None] * radii[:, None, None]
    return js, torch.randn(count, n, dtype=F64, generator=_gen(1))


def _fixed_point_case(method: fi.InnerMethod) -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    js, cs = _affine(8, 6)

    def solve(j: torch.Tensor, c: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(
            lambda x, j, c: j @ x + c, torch.zeros(6, dtype=F64), j, c, method=method
        )

    eye = torch.eye(6, dtype=F64)
    return solve, (js, cs), torch.linalg.solve(eye - js, cs)


def _root_case(method: fi.InnerMethod) -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    # x^3 = a from x = 1: Newton needs more steps the further a is from 1
    a = torch.logspace(0, 9, 8, dtype=F64)[:, None] * torch.ones(8, 3, dtype=F64)

    def solve(a: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_root(lambda x, a: x**3 - a, torch.ones(3, dtype=F64), a, method=method)

    return solve, (a,), a ** (1 / 3)


def _minimize_case(method: fi.InnerMethod) -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    # 0.5 x^T D x - b^T x: conditioning (and the count) grows along the batch
    d = torch.stack([torch.logspace(0, k, 5, dtype=F64) for k in torch.linspace(0, 4, 8)])
    b = torch.randn(8, 5, dtype=F64, generator=_gen(2))

    def solve(d: torch.Tensor, b: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.minimize(
            lambda x, d, b: 0.5 * (d * x * x).sum() - (b * x).sum(),
            torch.zeros(5, dtype=F64),
            d,
            b,
            method=method,
        )

    return solve, (d, b), b / d


CASES = {
    "FixedPointIteration": lambda: _fixed_point_case(fi.FixedPointIteration(maxiter=1000)),
    "Anderson": lambda: _fixed_point_case(fi.Anderson(history=3)),
    "Newton": lambda: _root_case(fi.Newton()),
    "LBFGS": lambda: _minimize_case(fi.LBFGS(memory=3, maxiter=500)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_uneven_batch_compacts_and_changes_nothing(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    solve, data, reference = CASES[name]()
    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(*data), monkeypatch)
    counts = plain.iterations
    assert int(counts.max()) >= 2 * int(counts.min()), counts  # uneven indeed
    assert any(attempts), attempts  # compaction ran
    _assert_identical(compacted, plain)
    assert bool(compacted.converged.all())
    singles = [solve(*(leaf[i] for leaf in data)) for i in range(len(counts))]
    _assert_as_alone(compacted, singles)
    torch.testing.assert_close(compacted.value, reference, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("at_most", [1, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_last_element_runs_alone_outside_vmap(
    name: str, at_most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``COMPACT_ALONE``, the last active element (or the last ``ALONE_AT_MOST``, in
    turn) leaves the ``vmap`` (the transforms are set aside once per solve, for the tails);
    without it, never. Counts and statuses stay those of the uncompacted loop."""
    monkeypatch.setattr(_loop, "ALONE_AT_MOST", at_most)
    solve, data, _ = CASES[name]()
    _loop.COMPACT = False
    try:
        plain = vmap(solve)(*data)
    finally:
        _loop.COMPACT = True
    entered = [0]
    original = _compat.outside_transforms

    def counted() -> Any:
        entered[0] += 1
        return original()

    monkeypatch.setattr(_compat, "outside_transforms", counted)
    result = vmap(solve)(*data)
    assert entered[0] == (1 if _loop.COMPACT_ALONE else 0), entered
    _assert_identical(result, plain)
    # the slowest elements, alone at the end, have the counts and statuses of their solves
    # alone (each started from its own iteration number: Anderson's and Broyden's depend on it)
    for last in result.iterations.argsort(descending=True)[: _loop.ALONE_AT_MOST].tolist():
        single = solve(*(leaf[last] for leaf in data))
        assert int(result.iterations[last]) == int(single.iterations)
        assert int(result.status[last]) == int(single.status)
        torch.testing.assert_close(result.value[last], single.value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("every", [3, None])
def test_check_every_compacts_at_checks_only(
    every: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, cs = _affine(8, 6)
    method = fi.FixedPointIteration(maxiter=1000, check_every=every)

    def solve(j: torch.Tensor, c: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(
            lambda x, j, c: j @ x + c, torch.zeros(6, dtype=F64), j, c, method=method
        )

    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(js, cs), monkeypatch)
    _assert_identical(compacted, plain)
    # None: nothing is read on the host, so nothing is compacted (the full trip count runs)
    assert any(attempts) if every is not None else not attempts


def test_compacted_batch_of_pytrees_with_unbatched_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tree iterate, an argument shared by the batch (not batched), a non-tensor argument."""
    js, cs = _affine(8, 4)
    shift = torch.ones(4, dtype=F64)

    def F(x: dict[str, torch.Tensor], j: torch.Tensor, c: Any, scale: float) -> Any:
        return {"a": j @ x["a"] + c["c"], "b": 0.5 * x["b"] + scale * shift}

    def solve(j: torch.Tensor, c: torch.Tensor) -> fi.Solution[Any]:
        init = {"a": torch.zeros(4, dtype=F64), "b": torch.zeros(4, dtype=F64)}
        return fi.solve_fixed_point(
            F, init, j, {"c": c, "shared": shift}, 2.0, method=fi.FixedPointIteration(maxiter=500)
        )

    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(js, cs), monkeypatch)
    assert any(attempts)
    for key in ("a", "b"):
        _assert_same(compacted.value[key], plain.value[key], key)
    for name in FIELDS[1:]:
        _assert_same(getattr(compacted, name), getattr(plain, name), name)


# --------------------------------------------------------------------------------------------
# Where compaction must not run, or must be discarded: the results are those without it


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson"])
def test_closure_over_a_batched_tensor_falls_back(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``F`` closes over ``s``, batched by the outer ``vmap``: the compacted run sees the whole
    of ``s`` and is discarded; the loop goes on as without compaction (Anderson's iteration
    numbers included)."""
    thetas = torch.tensor([-0.9, -0.5, 0.0, 0.3, 0.6, 0.8, 0.85, 0.9], dtype=F64)
    scales = torch.linspace(0.1, 0.95, 8, dtype=F64)
    method = fi.FixedPointIteration(maxiter=1000) if name != "Anderson" else fi.Anderson(history=3)

    def solve(t: torch.Tensor, s: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(
            lambda x, t: s * torch.cos(x) + t, torch.zeros(3, dtype=F64), t, method=method
        )

    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(thetas, scales), monkeypatch)
    assert attempts, attempts  # tried,
    assert not any(attempts), attempts  # and discarded
    _assert_identical(compacted, plain)
    _assert_as_alone(compacted, [solve(thetas[i], scales[i]) for i in range(8)])


def test_vmap_grad_is_exact_and_not_compacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``x* = r x* + c``: ``d sum(x*) / dc = 1 / (1 - r)`` per entry and
    ``d sum(x*) / dr = sum(x*) / (1 - r)``."""
    radii = torch.linspace(0.1, 0.95, 8, dtype=F64)
    cs = torch.randn(8, 3, dtype=F64, generator=_gen(3))

    def loss(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        sol = fi.solve_fixed_point(
            lambda x, c, r: r * x + c,
            torch.zeros(3, dtype=F64),
            c,
            r,
            method=fi.FixedPointIteration(maxiter=1000),
        )
        return sol.value.sum()

    run = lambda: vmap(grad(loss, argnums=(0, 1)))(cs, radii)  # noqa: E731
    (dc, dr), (dc_plain, dr_plain), attempts = _on_and_off(run, monkeypatch)
    assert not any(attempts)  # grad on the stack: never compacted
    assert torch.equal(dc, dc_plain)
    assert torch.equal(dr, dr_plain)
    torch.testing.assert_close(dc, (1 / (1 - radii))[:, None].expand(8, 3), rtol=1e-8, atol=0)
    x_sum = cs.sum(1) / (1 - radii)
    torch.testing.assert_close(dr, x_sum / (1 - radii), rtol=1e-8, atol=0)


def test_nested_vmap_equals_each_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    js, cs = _affine(8, 4)
    js, cs = js.reshape(2, 4, 4, 4), cs.reshape(2, 4, 4)
    method = fi.FixedPointIteration(maxiter=1000)

    def solve(j: torch.Tensor, c: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(
            lambda x, j, c: j @ x + c, torch.zeros(4, dtype=F64), j, c, method=method
        )

    compacted, plain, _ = _on_and_off(lambda: vmap(vmap(solve))(js, cs), monkeypatch)
    _assert_identical(compacted, plain)
    for i in range(2):
        for k in range(4):
            single = solve(js[i, k], cs[i, k])
            assert int(compacted.iterations[i, k]) == int(single.iterations)
            torch.testing.assert_close(compacted.value[i, k], single.value, rtol=1e-12, atol=1e-12)


def test_vmap_inside_a_compacted_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's ``F`` runs a ``vmap`` of its own: compacted, unchanged."""
    js, cs = _affine(8, 4)

    def F(x: torch.Tensor, j: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return vmap(torch.dot, in_dims=(0, None))(j, x) + c

    def solve(j: torch.Tensor, c: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(
            F, torch.zeros(4, dtype=F64), j, c, method=fi.FixedPointIteration(maxiter=1000)
        )

    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(js, cs), monkeypatch)
    assert any(attempts)
    _assert_identical(compacted, plain)


def test_unrolled_with_grad_is_not_compacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``implicit=False`` with arguments requiring grad (classic autograd through the
    iterations): never compacted, the gradient is the uncompacted one."""
    js, cs = _affine(8, 4)
    grads = []
    for compact in (True, False):
        _loop.COMPACT = compact
        c = cs.clone().requires_grad_()
        sol = vmap(
            lambda j, c: fi.solve_fixed_point(
                lambda x, j, c: j @ x + c,
                torch.zeros(4, dtype=F64),
                j,
                c,
                method=fi.FixedPointIteration(maxiter=1000),
                implicit=False,
            )
        )(js, c)
        sol.value.sum().backward()  # type: ignore[no-untyped-call]
        grads.append(c.grad)
    _loop.COMPACT = True
    assert grads[0] is not None
    assert grads[1] is not None
    assert torch.equal(grads[0], grads[1])


def test_state_that_is_not_all_tensors_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Levenberg-Marquardt keeps its linearization (functions) in its state: no compaction."""
    t = torch.linspace(0, 1, 6, dtype=F64)
    rates = torch.linspace(-3.0, 3.0, 8, dtype=F64)

    def solve(rate: torch.Tensor) -> fi.Solution[torch.Tensor]:
        y = 2.0 * torch.exp(rate * t)
        return fi.least_squares(
            lambda p, y: p[0] * torch.exp(p[1] * t) - y, torch.tensor([1.0, 0.0], dtype=F64), y
        )

    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(rates), monkeypatch)
    assert not any(attempts)
    _assert_identical(compacted, plain)


def test_a_problem_copied_with_replace_is_never_compacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A method of one's own that runs a modified copy of its problem: ``bind`` would rebuild
    the unmodified one, so a copy carries no ``bind`` and the loop is not compacted."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Halved(fi.FixedPointIteration):
        def run(self, problem: fi.InnerProblem, init: Any) -> fi.Solution[Any]:
            half = dataclasses.replace(problem, fixed_point=lambda x: 0.5 * problem.fixed_point(x))
            return super().run(half, init)

    js, cs = _affine(8, 4)

    def solve(j: torch.Tensor, c: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(
            lambda x, j, c: j @ x + c,
            torch.zeros(4, dtype=F64),
            j,
            c,
            method=Halved(maxiter=1000),
            implicit=False,
        )

    compacted, plain, attempts = _on_and_off(lambda: vmap(solve)(js, cs), monkeypatch)
    assert not any(attempts)
    _assert_identical(compacted, plain)
    eye = torch.eye(4, dtype=F64)
    reference = torch.linalg.solve(eye - 0.5 * js, 0.5 * cs)
    torch.testing.assert_close(compacted.value, reference, rtol=1e-8, atol=1e-9)


def test_unrolled_through_a_captured_tensor_requiring_grad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``implicit=False`` with ``F`` closing over a plain tensor that requires grad: the
    compacted run would carry a graph, so it is discarded; the gradient is the plain one."""
    js, cs = _affine(8, 4)
    grads = []
    attempts: list[bool] = []
    for compact in (True, False):
        _loop.COMPACT = compact
        scale = torch.tensor(1.0, dtype=F64, requires_grad=True)
        seen = _record(monkeypatch)
        sol = vmap(
            lambda j, c, scale=scale: fi.solve_fixed_point(
                lambda x, j, c: scale * (j @ x) + c,
                torch.zeros(4, dtype=F64),
                j,
                c,
                method=fi.FixedPointIteration(maxiter=1000),
                implicit=False,
            )
        )(js, cs)
        attempts += seen
        monkeypatch.undo()
        sol.value.sum().backward()  # type: ignore[no-untyped-call]
        grads.append(scale.grad)
    _loop.COMPACT = True
    assert attempts
    assert not any(attempts)
    assert grads[0] is not None
    assert grads[1] is not None
    assert torch.equal(grads[0], grads[1])


def test_random_function_under_vmap_randomness_different(monkeypatch: pytest.MonkeyPatch) -> None:
    """``F`` draws random numbers under ``vmap(randomness="different")``: the fresh ``vmap``
    refuses them, and the loop goes on uncompacted with the same random stream."""
    thetas = torch.linspace(0.05, 0.9, 6, dtype=F64)

    def F(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return s * torch.cos(x) + 1e-14 * torch.rand_like(x)

    def run() -> fi.Solution[torch.Tensor]:
        torch.manual_seed(0)
        return vmap(
            lambda s: fi.solve_fixed_point(
                F,
                torch.ones(3, dtype=F64),
                s,
                method=fi.FixedPointIteration(maxiter=500),
                implicit=False,
            ),
            randomness="different",
        )(thetas)

    compacted, plain, attempts = _on_and_off(run, monkeypatch)
    assert attempts
    assert not any(attempts)
    _assert_identical(compacted, plain)
