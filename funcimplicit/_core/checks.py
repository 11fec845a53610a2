"""Input validation with messages that name the call, the expected and the received."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from optree import PyTreeSpec

from . import tree as _tree
from .compat import active_transforms, forward_ad_level, is_compiling

RuleT = TypeVar("RuleT", bound=Callable[..., Any])

__all__ = [
    "check_same_layout",
    "derivatives_possible",
    "floating_leaves",
    "may_mutate",
    "refuse_forward_over_forward",
    "refuse_whole_graph_trace",
]


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


def derivatives_possible() -> bool:
    """Whether anything may differentiate the code running now.

    False only in plain eager code with grad mode off, no ``torch.func`` transform and no
    forward-mode dual level (e.g. inside a classic ``.backward()`` without
    ``create_graph``); then a solve may skip its differentiable rule.
    """
    if torch.is_grad_enabled() or forward_ad_level() >= 0:
        return True
    if is_compiling():
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
    if forward_ad_level() >= 0 or is_compiling():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    names = active_transforms()
    return names is not None and all(name == "Vmap" for name in names)


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
    if (active_transforms() or []).count("Jvp") >= 2:
        raise NotImplementedError(
            f"{call}: forward-over-forward differentiation (jacfwd(jacfwd(...)) or a jvp of a "
            "jvp) through an implicit function gives wrong second derivatives on this torch "
            "(an upstream autograd.Function bug, pytorch issue 197867). Take second "
            "derivatives as torch.func.hessian (= jacfwd(jacrev(...))), jacrev(jacrev(...)) "
            "or jacrev(jacfwd(...)), which are exact."
        )
