"""Machinery for loops that run under ``vmap``, ``torch.func`` transforms and compile.

Every loop keeps its per-element state as tensors and freezes an element once it is done
(``torch.where`` with its flag), so extra iterations never change a finished element. The
only host read is :func:`progress`, which decides when the whole batch may stop: it looks
at the physical tensor beneath any ``torch.func`` wrappers (``compat.physical``, guarded)
and answers ``"unknown"`` whenever it cannot look, which falls back to the full trip count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import tree as _tree
from .compat import physical as physical

__all__ = ["iterate", "progress", "safe_div", "safe_sqrt"]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` whose derivative at ``x = 0`` is 0 rather than NaN (for unrolled autograd)."""
    zero = x == 0
    return torch.sqrt(x.masked_fill(zero, 1)).masked_fill(zero, 0)


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, with ``den == 0`` replaced by 1 (so ``0 / 0`` gives 0, never NaN).

    Where ``den`` vanishes because the element is finished, ``num`` vanishes too.
    """
    return num / den.masked_fill(den == 0, 1)


#: Answers of :func:`progress`.
ALL_DONE = "all"
NONE_DONE = "none"
SOME_DONE = "some"
UNKNOWN = "unknown"


def progress(done: torch.Tensor) -> str:
    """How many batch elements are done: ``"all"``, ``"none"``, ``"some"`` or ``"unknown"``.

    One host read per call. ``"none"`` lets a loop skip its freezing ``where`` (it would be an
    identity); ``"unknown"`` (under compile, or where the private API is unavailable) means the
    loop must freeze and run its full trip count.
    """
    plain = physical(done)
    if plain is None:
        return UNKNOWN
    try:
        if plain.numel() == 1:  # one problem: a single read
            return ALL_DONE if bool(plain) else NONE_DONE
        count = int(plain.sum())
    except Exception:  # a fake or symbolic tensor
        return UNKNOWN
    if count == plain.numel():
        return ALL_DONE
    return NONE_DONE if count == 0 else SOME_DONE


Step = Callable[[Any], tuple[Any, torch.Tensor]]


def checked(k: int, check_every: int | None) -> bool:
    """Whether iteration ``k`` (from 0) of a loop may read the batch's progress on the host.

    ``check_every=1`` reads at every iteration, ``k`` every ``k``-th, ``None`` never: the
    loop then runs its full trip count with no host synchronization (for GPUs).
    """
    return check_every is not None and k % check_every == 0


def iterate(
    step: Step, state: Any, done: torch.Tensor, maxiter: int, check_every: int | None = 1
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Apply ``step`` to every element that is not done, at most ``maxiter`` times.

    ``step(state) -> (new_state, finished)`` works on one problem (vmap batches it). A done
    element is frozen with ``torch.where``, so its state is exactly what it was when it
    finished. The loop ends when all elements are done (one host read per iteration; every
    ``check_every``-th iteration, or never with ``None``) or, when that cannot be read
    (compile), after ``maxiter`` iterations.

    Returns:
        ``(state, iterations, done)`` with per-element iteration counts (int64).
    """
    iterations = torch.zeros_like(done, dtype=torch.int64)
    shared = 0  # iterations in which every element was active: added to all at the end
    for k in range(maxiter):
        status = progress(done) if checked(k, check_every) else UNKNOWN
        if status == ALL_DONE:
            break
        new_state, finished = step(state)
        if status == NONE_DONE:  # nobody to freeze: skip the where (it would be an identity)
            state, done = new_state, finished
            shared += 1
        else:
            active = ~done
            state = _tree.where(active, new_state, state)
            done = done | finished
            iterations = iterations + active.to(torch.int64)
    return state, iterations + shared if shared else iterations, done
