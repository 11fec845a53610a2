"""Every use of a private torch API, in one place, each guarded (``tests/test_torch_internals.py``).

The library reads five things torch does not promise to keep:

- the plain tensor beneath ``torch.func`` wrappers (:func:`physical`), so that a loop under
  ``vmap`` can stop once every batch element is done, and warnings can read a result;
- one ``vmap`` level's batched tensors taken apart and rebuilt (:func:`vmap_level`,
  :func:`unbatch`, :func:`rebatch`), so that a loop can run on its active elements only;
- the stack of active ``torch.func`` transforms (:func:`transform_levels`), so that a rule
  knows whether a second derivative can flow and whether a buffer may be updated in place;
- the forward-AD dual level (:func:`forward_ad_level`);
- the saved-tensor hooks stack (:func:`without_saved_tensor_hooks`).

Each function answers "unknown" (``None``, ``False``, or no change) where the API has moved,
so a new torch release degrades to slower, still correct behaviour: loops run to ``maxiter``
and warnings stay silent. The canary tests make such a degradation fail loudly instead.
Verified on the torch versions from :data:`TESTED_SINCE` on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
import torch.utils._pytree

__all__ = [
    "TESTED_SINCE",
    "TORCH_VERSION",
    "active_transforms",
    "batched_at",
    "forward_ad_level",
    "is_compiling",
    "is_transformed",
    "never_compiled",
    "never_traced",
    "physical",
    "rebatch",
    "register_dataclass",
    "transform_levels",
    "unbatch",
    "vmap_level",
    "without_saved_tensor_hooks",
]

RuleT = TypeVar("RuleT", bound=Callable[..., Any])
ClassT = TypeVar("ClassT", bound=type)


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


#: ``(major, minor)`` of the running torch.
TORCH_VERSION = _version(torch.__version__)
#: The oldest torch on which the canary tests have checked every function here.
TESTED_SINCE = (2, 13)


def is_compiling() -> bool:
    """Whether dynamo is tracing the code running now (nothing may be read on the host)."""
    return bool(torch.compiler.is_compiling())


def physical(tensor: torch.Tensor) -> torch.Tensor | None:
    """The plain tensor beneath all ``torch.func`` wrappers, or ``None`` when unreachable.

    Under ``vmap`` it holds every batch element, so reductions over it see the whole batch.
    Under ``torch.compile`` nothing may be read on the host, so the answer is ``None``.
    """
    if is_compiling():
        return None
    try:
        functorch = torch._C._functorch
        while functorch.is_functorch_wrapped_tensor(tensor):
            tensor = functorch.get_unwrapped(tensor)
        if functorch.is_legacy_batchedtensor(tensor):  # torch._vmap_internals: cannot look
            return None
        if tensor.device.type == "meta":
            return None
        return tensor
    except Exception:  # private API changed: treat as unknown, loops run their full count
        return None


def vmap_level() -> int | None:
    """The level of the innermost transform when every active transform is a ``vmap``.

    ``None`` when there is none, when any other transform (``grad``, ``jvp``,
    functionalization) is active, under ``torch.compile``, or where the API cannot be read:
    the only stack under which :func:`unbatch` and :func:`rebatch` are used.
    """
    if is_compiling():
        return None
    levels = transform_levels()
    if not levels or any(kind != "Vmap" for kind, _ in levels):
        return None
    return levels[-1][1]


def unbatch(tensor: torch.Tensor, level: int) -> torch.Tensor | None:
    """The physical tensor of ``tensor``, batch dimension first, when ``tensor`` is batched at
    ``level`` directly over a plain tensor; ``None`` for any other structure (not batched,
    batched at another level, wrappers nested) or where the private API cannot be read."""
    if not batched_at(tensor, level):
        return None
    try:
        functorch = torch._C._functorch
        plain = functorch.get_unwrapped(tensor)
        return plain.movedim(functorch.maybe_get_bdim(tensor), 0)
    except Exception:  # the private API moved: unknown
        return None


def batched_at(tensor: torch.Tensor, level: int) -> bool:
    """Whether ``tensor`` is batched at ``level`` directly over a plain tensor (what
    :func:`unbatch` takes apart); ``False`` where unknown."""
    try:
        functorch = torch._C._functorch
        if not functorch.is_batchedtensor(tensor) or functorch.maybe_get_level(tensor) != level:
            return False
        plain = functorch.get_unwrapped(tensor)
        return not (
            functorch.is_functorch_wrapped_tensor(plain)
            or functorch.is_legacy_batchedtensor(plain)
            or plain.device.type == "meta"
        )
    except Exception:  # the private API moved: unknown
        return False


def rebatch(tensor: torch.Tensor, level: int) -> torch.Tensor:
    """The plain ``tensor`` seen as batched at ``level`` along its first dimension (the
    inverse of :func:`unbatch`). Only called where :func:`unbatch` succeeded on this level."""
    return torch._C._functorch._add_batch_dim(tensor, 0, level)


def can_set_aside() -> bool:
    """Whether :func:`outside_transforms` may run code as the transforms would, for a caller
    that knows nothing it computes there is differentiated: every active ``vmap`` refuses
    random operations (``randomness="error"``, its default; with ``"same"`` or
    ``"different"`` a random draw outside would differ)."""
    try:
        from torch._functorch import pyfunctorch

        stack = pyfunctorch.retrieve_all_functorch_interpreters()
        return all(
            i.randomness() == "error" for i in stack if isinstance(i, pyfunctorch.VmapInterpreter)
        )
    except Exception:  # the private API moved: unknown
        return False


def beneath_grad(tensor: torch.Tensor, level: int, vmap: int | None) -> tuple[bool, Any]:
    """``tensor`` of a computation at ``grad`` level ``level`` (inside at most one ``vmap``,
    at level ``vmap``), seen beneath both: ``(True, (plain, 0))`` for a tensor batched by the
    ``vmap`` (its physical tensor, batch dimension first), ``(True, (plain, None))`` for one it
    does not batch, ``(False, None)`` for any other structure or where unknown."""
    try:
        functorch = torch._C._functorch
        if functorch.is_gradtrackingtensor(tensor):
            if functorch.maybe_get_level(tensor) != level:
                return False, None
            tensor = functorch.get_unwrapped(tensor)
        if vmap is not None and batched_at(tensor, vmap):
            return True, (unbatch(tensor, vmap), 0)
        if is_transformed(tensor) or tensor.device.type == "meta":
            return False, None
        return True, (tensor, None)
    except Exception:  # the private API moved: unknown
        return False, None


@contextlib.contextmanager
def outside_transforms() -> Iterator[None]:
    """Run the block with every ``torch.func`` transform set aside (as if outside them all),
    then restore them: plain tensors computed there are plain, at plain-eager cost.

    Only entered where :func:`can_set_aside` holds, by a caller that has checked that every
    tensor it uses is plain (``unbatch``)."""
    from torch._functorch import pyfunctorch

    with pyfunctorch.temporarily_clear_interpreter_stack():
        yield


def is_transformed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is wrapped by a ``torch.func`` transform (``False`` if unknown)."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))
    except Exception:  # the private API moved: unknown
        return False


def transform_levels() -> list[tuple[str, int]] | None:
    """The active ``torch.func`` transforms as ``(kind, level)``, outermost first.

    ``kind`` is ``"Vmap"``, ``"Grad"``, ``"Jvp"`` or ``"Functionalize"``; ``None`` where the
    private API cannot be read.
    """
    try:
        from torch._functorch import pyfunctorch

        return [
            (str(i.key()).rsplit(".", 1)[-1], int(i.level()))
            for i in pyfunctorch.retrieve_all_functorch_interpreters()
        ]
    except Exception:  # the private API moved: unknown
        return None


def active_transforms() -> list[str] | None:
    """The kinds of :func:`transform_levels`, outermost first; ``None`` when unknown."""
    levels = transform_levels()
    return None if levels is None else [kind for kind, _ in levels]


def differentiating_levels(levels: Sequence[tuple[str, int]]) -> list[int]:
    """The levels of ``levels`` that carry derivatives (``grad``, ``jvp``)."""
    return [level for kind, level in levels if kind in ("Grad", "Jvp")]


def forward_ad_level() -> int:
    """The innermost open forward-AD dual level; ``-1`` where none is open."""
    return int(torch.autograd.forward_ad._current_level)


def never_compiled(rule: RuleT) -> RuleT:
    """Keep ``torch.compile`` out of a derivative rule of an ``autograd.Function``.

    ``torch.compile(torch.func.grad(f))`` or ``torch.compile(torch.func.jvp(...))`` over an
    implicit function falls back to eager for the transform on torch 2.13, but keeps compiling
    every Python frame it calls, including the custom ``backward``/``jvp`` rule, whose
    inputs are then functorch-wrapped tensors that AOTAutograd cannot take ("Cannot access
    storage of TensorWrapper"). Run eagerly, the rule is correct under every transform; a
    rule never runs inside a compiled graph anyway (dynamo breaks the graph at the
    Function), so nothing is lost.
    """
    return cast(RuleT, torch.compiler.disable(rule))  # type: ignore[no-untyped-call]


def never_traced(reason: str) -> Callable[[RuleT], RuleT]:
    """Run a function eagerly even when its caller is compiled (a graph break at its call).

    For code that dynamo must not trace because tracing it would guard on per-call objects
    (and so recompile on every call). With ``fullgraph=True`` the compile fails with
    ``reason`` in its message.
    """

    def decorate(fn: RuleT) -> RuleT:
        return cast(RuleT, torch.compiler.disable(fn, reason=reason))  # type: ignore[no-untyped-call]

    return decorate


@contextlib.contextmanager
def without_saved_tensor_hooks() -> Iterator[None]:
    """Set aside the active ``saved_tensors_hooks`` (e.g. ``save_on_cpu``) for a moment.

    ``torch.func.grad``/``vjp`` refuse to run while such hooks are active, and the implicit
    rule evaluates the optimality function (which may call them) in the forward pass. The
    tensors that evaluation saves skip the user's hooks; they are a few solution-sized ones.
    Private API (``torch._C._autograd``), guarded: where it is missing, nothing changes.
    """
    autograd = torch._C._autograd
    hooks: list[Any] = []
    try:
        while (top := autograd._top_saved_tensors_default_hooks(False)) is not None:
            hooks.append(top)
            autograd._pop_saved_tensors_default_hooks()
    except Exception:  # the private API moved: leave the hooks as they are
        pass
    try:
        yield
    finally:
        for pack, unpack in reversed(hooks):
            autograd._push_saved_tensors_default_hooks(pack, unpack)


def register_dataclass(cls: ClassT) -> ClassT:
    """Register a result dataclass with torch's pytree, so ``vmap`` and dynamo see its fields."""
    torch.utils._pytree.register_dataclass(cls)
    return cls
