"""Input validation with messages that name the call, the expected and the received."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from optree import PyTreeSpec

from . import _tree

RuleT = TypeVar("RuleT", bound=Callable[..., Any])

__all__ = [
    "check_no_captured_tensors",
    "check_same_layout",
    "derivatives_possible",
    "floating_leaves",
    "is_transformed",
    "may_mutate",
    "never_compiled",
    "refuse_forward_over_forward",
    "refuse_whole_graph_trace",
]


def is_transformed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))


def floating_leaves(tree: Any, call: str, name: str) -> tuple[list[torch.Tensor], PyTreeSpec]:
    """Leaves of ``tree``, checked to be real floating tensors of one dtype and device."""
    leaves, spec = _tree.flatten(tree)
    if not leaves:
        raise ValueError(f"{call}: expected {name} to hold at least one tensor; received {tree!r}.")
    for index, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{call}: expected every leaf of {name} to be a torch.Tensor; leaf {index} is "
                f"{type(leaf).__name__} ({leaf!r}). Convert it with torch.as_tensor."
            )
        if not leaf.dtype.is_floating_point:
            raise TypeError(
                f"{call}: expected {name} to hold real floating-point tensors; leaf {index} has "
                f"dtype {leaf.dtype}. Cast it, e.g. with .to(torch.float32)"
                + (" (complex tensors are not supported)." if leaf.dtype.is_complex else ".")
            )
    first = leaves[0]
    for index, leaf in enumerate(leaves[1:], start=1):
        if leaf.dtype != first.dtype or leaf.device != first.device:
            raise TypeError(
                f"{call}: expected all leaves of {name} to share one dtype and device; leaf 0 is "
                f"{first.dtype} on {first.device}, leaf {index} is {leaf.dtype} on {leaf.device}. "
                "Move them with .to(dtype=..., device=...)."
            )
    return leaves, spec


def check_same_layout(
    received: Any, expected: Any, call: str, what: str, reference: str = "b"
) -> None:
    """Raise unless ``received`` has the structure, shapes, dtype and device of ``expected``."""
    got_leaves, got_spec = _tree.flatten(received)
    want_leaves, want_spec = _tree.flatten(expected)
    if got_spec != want_spec:
        raise ValueError(
            f"{call}: expected {what} to have the tree structure of {reference}.\n"
            f"  expected: {want_spec}\n  received: {got_spec}"
        )
    for index, (got, want) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        if not isinstance(got, torch.Tensor):
            raise TypeError(
                f"{call}: {what} must hold tensors; leaf {index} is {type(got).__name__}."
            )
        if got.shape != want.shape:
            raise ValueError(
                f"{call}: {what} leaf {index} has shape {tuple(got.shape)}; expected "
                f"{tuple(want.shape)}, the shape of {reference} leaf {index}."
            )
        if got.dtype != want.dtype or got.device != want.device:
            raise TypeError(
                f"{call}: {what} leaf {index} is {got.dtype} on {got.device}; expected "
                f"{want.dtype} on {want.device}, like {reference} leaf {index}."
            )


def _captured_objects(fn: Any, depth: int) -> list[tuple[str, Any]]:
    """Objects a callable carries with it: closure cells, defaults, partial arguments."""
    found: list[tuple[str, Any]] = []
    if depth > 3:
        return found
    if isinstance(fn, functools.partial):
        found += [(f"partial argument {i}", a) for i, a in enumerate(fn.args)]
        found += [(f"partial keyword {k!r}", v) for k, v in fn.keywords.items()]
        found += _captured_objects(fn.func, depth + 1)
        return found
    if isinstance(fn, types.MethodType):
        found.append(("bound object", fn.__self__))
        return found + _captured_objects(fn.__func__, depth + 1)
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None)
    if code is not None and closure:
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (variable not yet assigned)
                continue
            found.append((f"closure variable {name!r}", value))
            if callable(value) and not isinstance(value, torch.nn.Module | type):
                found += _captured_objects(value, depth + 1)
    if code is not None:
        # Module-level names the function reads (a global tensor is captured just the same).
        namespace = getattr(fn, "__globals__", {})
        for name in code.co_names:
            value = namespace.get(name)
            if isinstance(value, torch.Tensor | torch.nn.Module):
                found.append((f"global variable {name!r}", value))
    for i, default in enumerate(getattr(fn, "__defaults__", None) or ()):
        found.append((f"default argument {i}", default))
    return found


def _tracked_tensor(value: Any) -> bool:
    if isinstance(value, torch.nn.Module):
        return any(p.requires_grad or is_transformed(p) for p in value.parameters())
    try:
        leaves, _ = _tree.flatten(value)
    except Exception:  # an object optree cannot walk holds nothing we can check
        return False
    return any(
        isinstance(leaf, torch.Tensor) and (leaf.requires_grad or is_transformed(leaf))
        for leaf in leaves
    )


def check_no_captured_tensors(fn: Callable[..., Any], call: str, name: str) -> None:
    """Refuse a callback that closes over a tensor (or module) that may be differentiated.

    Derivatives flow only through the explicit arguments: a tensor captured by a closure is
    invisible to the implicit rule, so its gradient would be silently zero or wrong.
    Under ``torch.compile`` (which cannot trace closure inspection) the check is skipped:
    the eager run of the same code performs it.
    """
    if torch.compiler.is_compiling():
        return
    for where, value in _captured_objects(fn, 0):
        if _tracked_tensor(value):
            kind = (
                "an nn.Module with trainable parameters"
                if isinstance(value, torch.nn.Module)
                else "a tensor that requires grad or is traced by a torch.func transform"
            )
            raise ValueError(
                f"{call}: {name} captures {kind} ({where}). Derivatives only flow through "
                f"explicit arguments, so this one would be silently wrong. Pass it as an "
                f"argument instead (for modules, pass their parameters and use "
                f"torch.func.functional_call), or .detach() it if it is constant."
            )


def _active_transforms() -> list[str]:
    """Names of the active ``torch.func`` transforms, outermost first (private API, guarded)."""
    names = active_transforms()
    return [] if names is None else names


def active_transforms() -> list[str] | None:
    """Like :func:`_active_transforms`, but ``None`` when the private API cannot be read."""
    try:
        from torch._functorch import pyfunctorch

        return [
            str(interpreter.key()).rsplit(".", 1)[-1]
            for interpreter in pyfunctorch.retrieve_all_functorch_interpreters()
        ]
    except Exception:  # the private API moved: unknown
        return None


def derivatives_possible() -> bool:
    """Whether anything may differentiate the code running now.

    False only in plain eager code with grad mode off, no ``torch.func`` transform and no
    forward-mode dual level (e.g. inside a classic ``.backward()`` without
    ``create_graph``); then a solve may skip its differentiable rule.
    """
    if torch.is_grad_enabled() or torch.autograd.forward_ad._current_level >= 0:
        return True
    if torch.compiler.is_compiling():
        return True
    names = active_transforms()
    return names is None or bool(names)


def may_mutate(*tensors: torch.Tensor) -> bool:
    """Whether a solver may update work buffers derived from ``tensors`` in place.

    Only where nothing records the computation: no forward AD, no ``grad`` or ``jvp``
    transform (``vmap`` alone is fine), not compiling, and either grad mode off or none of
    ``tensors`` requiring grad. Elsewhere autograd could have saved a buffer for a backward
    pass, so updates stay out of place.
    """
    if torch.autograd.forward_ad._current_level >= 0 or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    names = active_transforms()
    return names is not None and all(name == "Vmap" for name in names)


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


def refuse_whole_graph_trace(problem: object, expected: type, call: str) -> None:
    """Raise a clear error where dynamo traces an implicit ``autograd.Function`` whole.

    With ``fullgraph=True`` (no graph break allowed), torch 2.13's dynamo tries to trace the
    Function and calls its ``forward`` with the ``ctx`` in place of the first argument; the
    rule (a custom ``jvp``) is unsupported anyway, so no such trace can succeed.
    """
    if not isinstance(problem, expected):
        raise RuntimeError(
            f"{call}: torch.compile(..., fullgraph=True) cannot trace through an implicit "
            "function on this torch: dynamo does not support an autograd.Function with a "
            "custom jvp rule, which carries the implicit derivative. Compile without "
            "fullgraph=True (the rule then runs eagerly and is correct), or, for a meta-"
            "gradient compiled as one graph (also under vmap), use fi.hypergradient, which "
            "is written with plain operations."
        )


def refuse_forward_over_forward(call: str) -> None:
    """Raise inside a custom ``jvp`` rule that runs under two forward-mode transforms.

    On torch 2.13, forward-over-forward (``jacfwd(jacfwd(f))``, ``jvp`` of ``jvp``) through
    any ``autograd.Function`` gives wrong second derivatives (pytorch issue 197867); the
    other orders are exact.
    """
    if _active_transforms().count("Jvp") >= 2:
        raise NotImplementedError(
            f"{call}: forward-over-forward differentiation (jacfwd(jacfwd(...)) or a jvp of a "
            "jvp) through an implicit function gives wrong second derivatives on this torch "
            "(an upstream autograd.Function bug, pytorch issue 197867). Take second "
            "derivatives as torch.func.hessian (= jacfwd(jacrev(...))), jacrev(jacrev(...)) "
            "or jacrev(jacfwd(...)), which are exact."
        )
