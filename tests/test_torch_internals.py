"""Canaries for the private torch APIs the library relies on (``funcimplicit/_core/compat.py``).

Every function there degrades quietly where torch moves an API: loops run to ``maxiter``
instead of stopping once the batch is done, warnings go silent, second-order checks assume
the worst. These tests make such a degradation fail loudly on a new torch release instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import grad, jvp, vmap

import funcimplicit as fi
from funcimplicit._core import compat
from funcimplicit._core.loop import ALL_DONE, NONE_DONE, SOME_DONE, progress

f64 = torch.float64


def test_version_is_parsed_and_tested() -> None:
    assert tuple(int(p) for p in torch.__version__.split(".")[:2]) == compat.TORCH_VERSION
    assert compat.TORCH_VERSION >= compat.TESTED_SINCE


def test_physical_is_the_plain_tensor_under_vmap_and_grad() -> None:
    x = torch.arange(6.0, dtype=f64).reshape(3, 2)
    seen: list[torch.Tensor | None] = []

    def inner(v: torch.Tensor) -> torch.Tensor:
        seen.append(compat.physical(v))
        assert compat.is_transformed(v)
        return (v * v).sum()

    vmap(grad(inner))(x)
    plain = seen[0]
    assert plain is not None
    assert not compat.is_transformed(plain)
    assert plain.shape == (3, 2)  # the whole batch, beneath the grad and vmap wrappers
    torch.testing.assert_close(plain, x)
    assert compat.physical(x) is x
    assert not compat.is_transformed(x)


def test_progress_reads_the_whole_batch_under_vmap() -> None:
    flags = torch.tensor([True, False, True])
    assert vmap(lambda f: torch.tensor(progress(f) == SOME_DONE))(flags).all()
    assert vmap(lambda f: torch.tensor(progress(f) == ALL_DONE))(
        torch.ones(3, dtype=torch.bool)
    ).all()
    assert progress(torch.tensor(False)) == NONE_DONE


def _kinds_inside(transform: Callable[[Callable[..., Any]], Callable[..., Any]]) -> list[str]:
    kinds: list[list[str] | None] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        kinds.append(compat.active_transforms())
        return (x * x).sum()

    transform(f)(torch.ones(2, 3, dtype=f64))
    assert kinds[0] is not None, "the functorch interpreter stack cannot be read"
    return kinds[0]


def test_transform_stack_reads_the_expected_kinds() -> None:
    assert compat.active_transforms() == []
    assert _kinds_inside(lambda f: vmap(f)) == ["Vmap"]
    assert _kinds_inside(lambda f: lambda x: grad(f)(x[0])) == ["Grad"]
    assert _kinds_inside(lambda f: lambda x: jvp(f, (x,), (x,))) == ["Jvp"]
    assert _kinds_inside(lambda f: vmap(grad(f))) == ["Vmap", "Grad"]
    levels: list[list[tuple[str, int]] | None] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        levels.append(compat.transform_levels())
        return x.sum()

    vmap(grad(f))(torch.ones(2, 3))
    (outer, inner) = levels[0] or []
    assert outer[0] == "Vmap"
    assert inner[0] == "Grad"
    assert outer[1] < inner[1]
    assert compat.differentiating_levels(levels[0] or []) == [inner[1]]


def test_forward_ad_level() -> None:
    assert compat.forward_ad_level() == -1
    with torch.autograd.forward_ad.dual_level():
        assert compat.forward_ad_level() >= 0
    assert compat.forward_ad_level() == -1


def test_saved_tensor_hooks_are_set_aside_and_restored() -> None:
    x = torch.ones(3, dtype=f64)
    with torch.autograd.graph.save_on_cpu():
        with pytest.raises(RuntimeError):  # what the juggling works around
            grad(lambda v: (v * v).sum())(x)
        with compat.without_saved_tensor_hooks():
            torch.testing.assert_close(grad(lambda v: (v * v).sum())(x), 2 * x)
        with pytest.raises(RuntimeError):  # the hooks are back
            grad(lambda v: (v * v).sum())(x)


def _spd(n: int) -> torch.Tensor:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    m = torch.randn(n, n, generator=g, dtype=f64)
    return m @ m.T + n * torch.eye(n, dtype=f64)


MAXITER = 500


def _counted_cg(a: torch.Tensor, calls: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    def solve(b: torch.Tensor) -> torch.Tensor:
        def matvec(v: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return a @ v

        return fi.linear_solve(matvec, b, solve=fi.CG(maxiter=MAXITER))

    return solve


@pytest.mark.parametrize("mode", ["eager", "vmap", "vmap_grad"])
def test_batch_wide_early_stop_is_active(mode: str) -> None:
    """A loop stops once every element is done; were ``physical`` blind, it would run to maxiter."""
    n = 6
    a = _spd(n)
    b = torch.linspace(1.0, 2.0, 4 * n, dtype=f64).reshape(4, n)
    calls = [0]
    solve = _counted_cg(a, calls)
    if mode == "eager":
        x = solve(b[0])
    elif mode == "vmap":
        x = vmap(solve)(b)[0]
    else:
        x = vmap(grad(lambda v: solve(v).pow(2).sum()))(b)[0]
    assert torch.isfinite(x).all()
    # CG on a 6x6 SPD system needs at most ~7 matvecs per solve (two solves under grad).
    assert 0 < calls[0] < 40, f"{calls[0]} matvecs: the batch-wide early stop is not active"


def test_never_compiled_marks_the_rule_for_dynamo() -> None:
    def rule(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    wrapped = compat.never_compiled(rule)
    torch.testing.assert_close(wrapped(torch.zeros(2)), torch.ones(2))
    assert getattr(wrapped, "_torchdynamo_disable", False), "torch.compiler.disable changed"


def test_unbatch_and_rebatch_one_vmap_level() -> None:
    """The compaction of a vmap batch (``loop.compacted``) takes a level's batched tensors
    apart and rebuilds them: it stops compacting where these answer "unknown"."""
    x = torch.arange(6.0, dtype=f64).reshape(2, 3)  # batched along dim 1: 3 elements
    seen: dict[str, Any] = {}

    def inner(v: torch.Tensor) -> torch.Tensor:
        level = compat.vmap_level()
        assert level is not None
        rows = compat.unbatch(v, level)
        assert rows is not None
        assert compat.batched_at(v, level)
        assert not compat.batched_at(rows, level)
        assert compat.unbatch(v, level + 1) is None  # another level: refused
        seen["rows"] = rows
        return compat.rebatch(rows * 2, level)

    out = vmap(inner, in_dims=1)(x)
    torch.testing.assert_close(seen["rows"], x.T)  # the batch dimension first
    torch.testing.assert_close(out, 2 * x.T)

    def nested(v: torch.Tensor) -> torch.Tensor:
        level = compat.vmap_level()
        assert level is not None
        seen["nested"] = compat.unbatch(v, level)  # wraps a tensor batched at the outer level
        return v

    vmap(vmap(nested))(torch.zeros(2, 3, dtype=f64))
    assert seen["nested"] is None

    def under_grad(v: torch.Tensor) -> torch.Tensor:
        seen["grad"] = compat.vmap_level()
        return (v * v).sum()

    vmap(grad(under_grad))(x)
    assert seen["grad"] is None  # grad on the stack: no compaction
    assert compat.vmap_level() is None


def test_an_uneven_vmap_batch_is_compacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from funcimplicit._core import loop

    ran: list[bool] = []
    original = loop.compacted

    def recorded(*args: Any) -> Any:
        out = original(*args)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(loop, "compacted", recorded)
    thetas = torch.linspace(0.05, 0.9, 6, dtype=f64)
    vmap(
        lambda s: fi.solve_fixed_point(
            lambda x, s: s * torch.cos(x),
            torch.ones((), dtype=f64),
            s,
            method=fi.FixedPointIteration(maxiter=500),
        )
    )(thetas)
    assert ran
    assert all(ran)


def test_transforms_are_set_aside_and_restored() -> None:
    """A compacted batch's last element runs outside the transforms (``loop.compacted``):
    inside, no transform is active and plain tensors stay plain; after, the stack is back.
    Random operations under ``randomness="same"`` or ``"different"`` forbid it.

    Also the grad wrappers: ``beneath_grad`` finds the tensors beneath a grad level (and one
    vmap around it), for the first-order backward solve (``linear.solve_beneath``)."""
    seen: dict[str, Any] = {}

    def inner(v: torch.Tensor) -> torch.Tensor:
        seen["allowed"] = compat.can_set_aside()
        before = compat.transform_levels()
        with compat.outside_transforms():
            seen["inside"] = compat.transform_levels()
            plain = torch.ones(3, dtype=f64) * 2
            seen["plain"] = not compat.is_transformed(plain)
        seen["restored"] = compat.transform_levels() == before
        return v

    vmap(vmap(inner))(torch.zeros(2, 3, dtype=f64))
    assert seen == {"allowed": True, "inside": [], "plain": True, "restored": True}
    for randomness in ("same", "different"):
        vmap(lambda v: (seen.update(allowed=compat.can_set_aside()), v)[1], randomness=randomness)(
            torch.zeros(2, dtype=f64)
        )
        assert seen["allowed"] is False, randomness

    def under_vmap_grad(v: torch.Tensor) -> torch.Tensor:
        levels = compat.transform_levels()
        assert levels is not None
        assert [k for k, _ in levels] == ["Vmap", "Grad"]
        (_, vmap_level), (_, grad_level) = levels
        with compat.outside_transforms():
            # torch numbers levels by depth: a fresh vmap here gets the outer one's level
            # (what lets a callback's closure over the outer vmap's tensors read their rows)
            seen["fresh"] = (
                vmap(lambda _: torch.zeros(()) + (compat.vmap_level() or -1))(torch.zeros(2))[
                    0
                ].item()
                == vmap_level
            )
            seen["v"] = compat.beneath_grad(v, grad_level, vmap_level)
            seen["shared"] = compat.beneath_grad(shared, grad_level, vmap_level)
            seen["other"] = compat.beneath_grad(v, grad_level + 1, vmap_level)
        return (v * v).sum()

    shared = torch.ones(3, dtype=f64)
    batch = torch.arange(6.0, dtype=f64).reshape(3, 2)
    vmap(grad(under_vmap_grad), in_dims=1)(batch)
    ok, (rows, dim) = seen["v"]
    assert ok
    assert dim == 0
    torch.testing.assert_close(rows, batch.T)  # the batch dimension first
    assert seen["shared"] == (True, (shared, None))
    assert seen["other"] == (False, None)  # wrapped at another grad level: refused
    assert seen["fresh"] is True
    grad(lambda v: (seen.update(allowed=compat.can_set_aside()), v.sum())[1])(torch.ones(2))
    assert seen["allowed"] is True  # a grad level may be set aside (by a first-order caller)
