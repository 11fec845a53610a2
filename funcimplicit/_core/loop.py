"""Machinery for loops that run under ``vmap``, ``torch.func`` transforms and compile.

Every loop keeps its per-element state as tensors and freezes an element once it is done
(``torch.where`` with its flag), so extra iterations never change a finished element. The
only host read is :func:`progress`, which decides when the whole batch may stop: it looks
at the physical tensor beneath any ``torch.func`` wrappers (``compat.physical``, guarded)
and answers ``"unknown"`` whenever it cannot look, which falls back to the full trip count.

Under one or more ``vmap`` levels (and no other transform), a loop whose batch is at most
3/4 active runs the rest of its iterations on the active elements only ("compaction",
:func:`compacted`): a converged element then costs nothing instead of a frozen iteration.
Set :data:`COMPACT` to ``False`` to switch it off (the results are the same either way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import compat
from . import tree as _tree
from .compat import physical as physical

__all__ = ["COMPACT", "Compactable", "iterate", "progress", "safe_div", "safe_sqrt"]

#: Whether :func:`iterate` may compact a ``vmap`` batch to its active elements (a switch for
#: comparisons and for debugging: results and per-element counts are the same either way).
COMPACT = True
#: Whether the last few active elements of a compacted batch (at most :data:`ALONE_AT_MOST`)
#: run by themselves, one after another, outside every transform (plain-eager cost). Their
#: iterations then round as a solve of each element alone does, which may differ from the
#: batched loop's rounding in the last bits; ``False`` keeps them in a fresh ``vmap`` (a last
#: one as two copies), bit-identical to the uncompacted loop.
COMPACT_ALONE = True
#: How few active elements run one by one. 1 by default: a last element alone is never
#: slower than the batch of two copies it replaces. More is a trade: on a small problem on CPU
#: an iteration of a ``vmap`` of a few elements cost about 5x one element's plain iteration
#: (the per-op cost of batching), and 4 in turn ran 5% faster than 1 on the uneven benchmark;
#: but where a batched evaluation costs about one element's (a GPU, a large network), elements
#: in turn cost that many times more.
ALONE_AT_MOST = 1
#: Compact once at most this fraction of the batch is still active (and again, within the
#: compacted batch, each time this fraction is reached there; measured: 0.75 beat 0.5).
COMPACT_FRACTION = 0.75


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
    return _census(done)[0]


def _census(done: torch.Tensor) -> tuple[str, int, int]:
    """:func:`progress`, the number of active elements and the batch size (0, 0 if unknown)."""
    plain = physical(done)
    if plain is None:
        return UNKNOWN, 0, 0
    try:
        if plain.numel() == 1:  # one problem: a single read
            return (ALL_DONE, 0, 1) if bool(plain) else (NONE_DONE, 1, 1)
        count = int(plain.sum())
    except Exception:  # a fake or symbolic tensor
        return UNKNOWN, 0, 0
    total = plain.numel()
    if count == total:
        return ALL_DONE, 0, total
    return (NONE_DONE if count == 0 else SOME_DONE), total - count, total


def _worth_compacting(active: int, total: int) -> bool:
    """At most :data:`COMPACT_FRACTION` of the batch (some of it done) is active."""
    return active <= COMPACT_FRACTION * total


Step = Callable[[Any], tuple[Any, torch.Tensor]]


def checked(k: int, check_every: int | None) -> bool:
    """Whether iteration ``k`` (from 0) of a loop may read the batch's progress on the host.

    ``check_every=1`` reads at every iteration, ``k`` every ``k``-th, ``None`` never: the
    loop then runs its full trip count with no host synchronization (for GPUs).
    """
    return check_every is not None and k % check_every == 0


@dataclass(frozen=True)
class Compactable:
    """What :func:`iterate` needs to run a loop on part of its ``vmap`` batch.

    Attributes:
        args: the explicit arguments the step's problem is bound to (a pytree; its tensors
            are batched like the state, or not batched).
        step_on: ``step_on(args) -> step``: the loop's step for the same problem bound to
            other arguments (the active elements' rows of ``args``).
        resume: ``resume(k)``, called when a compacted run is discarded after ``k``
            iterations of the loop: the next step is iteration ``k`` again (for a step that
            numbers its iterations).
    """

    args: Any
    step_on: Callable[[Any], Step]
    resume: Callable[[int], None] = lambda k: None


class _Unsound(Exception):
    """A compacted step saw a tensor batched outside its own ``vmap`` (a closure)."""


def iterate(
    step: Step,
    state: Any,
    done: torch.Tensor,
    maxiter: int,
    check_every: int | None = 1,
    compactable: Compactable | None = None,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Apply ``step`` to every element that is not done, at most ``maxiter`` times.

    ``step(state) -> (new_state, finished)`` works on one problem (vmap batches it). A done
    element is frozen with ``torch.where``, so its state is exactly what it was when it
    finished. The loop ends when all elements are done (one host read per iteration; every
    ``check_every``-th iteration, or never with ``None``) or, when that cannot be read
    (compile), after ``maxiter`` iterations. With ``compactable``, once at most
    :data:`COMPACT_FRACTION` of a ``vmap`` batch is active, the remaining iterations run on
    the active elements only (:func:`compacted`), where that can be done soundly.

    Returns:
        ``(state, iterations, done)`` with per-element iteration counts (int64).
    """
    state, iterations, done, _ = _loop(step, state, done, maxiter, check_every, compactable)
    return state, iterations, done


def _loop(
    step: Step,
    state: Any,
    done: torch.Tensor,
    maxiter: int,
    check_every: int | None,
    compactable: Compactable | None,
    until_compactable: bool = False,
) -> tuple[Any, torch.Tensor, torch.Tensor, int]:
    """:func:`iterate`, also returning the number of iterations run; with
    ``until_compactable``, it stops early once compacting this batch would be worth it."""
    iterations = torch.zeros_like(done, dtype=torch.int64)
    shared = 0  # iterations in which every element was active: added to all at the end
    k = 0
    while k < maxiter:
        status, active, total = _census(done) if checked(k, check_every) else (UNKNOWN, 0, 0)
        if status == ALL_DONE:
            break
        if status == SOME_DONE and _worth_compacting(active, total):
            if until_compactable:
                break
            if compactable is not None and COMPACT:
                # run on the active elements until compacting again is worth it
                rest = compacted(compactable, state, done, maxiter - k, check_every, k)
                if rest is not None:
                    state, more, done, ran = rest
                    iterations = iterations + more
                    k += ran
                    continue
                compactable.resume(k)  # its steps are discarded
                compactable = None  # not possible now, nor later in this loop
        new_state, finished = step(state)
        if status == NONE_DONE:  # nobody to freeze: skip the where (it would be an identity)
            state, done = new_state, finished
            shared += 1
        else:
            active_now = ~done
            state = _tree.where(active_now, new_state, state)
            done = done | finished
            iterations = iterations + active_now.to(torch.int64)
        k += 1
    return state, iterations + shared if shared else iterations, done, k


def compacted(
    compactable: Compactable,
    state: Any,
    done: torch.Tensor,
    maxiter: int,
    check_every: int | None,
    start: int = 0,
) -> tuple[Any, torch.Tensor, torch.Tensor, int] | None:
    """Part of the rest of :func:`iterate`'s loop (``maxiter`` iterations at most), run on
    the elements of the innermost ``vmap`` batch that are not done, until compacting them
    again is worth it: ``(state, iterations, done, iterations run)``; ``None`` where that
    cannot be done soundly (the caller then goes on as before, from the same ``state``).

    The state's and the arguments' tensors are taken beneath the ``vmap`` wrappers (physical
    ``[B, ...]``), their active rows selected, and the loop runs under a fresh ``vmap`` over
    those rows; its results are scattered into new full tensors (the done rows keep their
    values) and batched again at the original level. Each element goes through the same
    steps as in the full batch, with the same global iteration numbers, so its values and
    count are those of the uncompacted loop. The last few active elements (at most
    :data:`ALONE_AT_MOST`) run by themselves, one after another, outside every transform
    (:data:`COMPACT_ALONE`), each from the same iteration number: the same steps on plain
    tensors, whose kernels (matrix-vector instead of batched products) may round differently
    in the last bits; with ``COMPACT_ALONE = False`` they stay in a fresh batch (a last one
    runs twice, in a batch of two), bit for bit as the uncompacted loop.

    Refused (``None``): any transform other than ``vmap`` on the stack, ``torch.compile``, a
    state leaf that is not a tensor, a tensor batched at another level or under nested
    wrappers, a tensor requiring grad with grad mode on (in or out), a step whose results
    come out batched outside the fresh ``vmap`` (the step captures a batched tensor in a
    closure: its compacted run is discarded), or any error inside the compacted run.
    """
    level = compat.vmap_level()
    plain_done = None if level is None else compat.unbatch(done, level)
    if level is None or plain_done is None:
        return None
    state_leaves, state_spec = _tree.flatten(state)
    arg_leaves, arg_spec = _tree.flatten(compactable.args)
    if not all(isinstance(leaf, torch.Tensor) for leaf in state_leaves):
        return None
    size = plain_done.shape[0]

    # Each tensor as (physical [B, ...], or None where it is not batched and is shared).
    def physical_rows(leaf: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        if not compat.is_transformed(leaf):
            return True, None
        rows = compat.unbatch(leaf, level)
        ok = rows is not None and rows.shape[0] == size
        ok = ok and not (torch.is_grad_enabled() and rows is not None and rows.requires_grad)
        return ok, rows

    state_rows = [physical_rows(leaf) for leaf in state_leaves]
    tensor_args = [i for i, leaf in enumerate(arg_leaves) if isinstance(leaf, torch.Tensor)]
    arg_rows = [physical_rows(arg_leaves[i]) for i in tensor_args]
    if not all(ok for ok, _ in state_rows + arg_rows):
        return None

    try:
        active = torch.nonzero(~plain_done).squeeze(1)
        alone = active.numel() <= ALONE_AT_MOST and COMPACT_ALONE and compat.can_set_aside()
        # a last active row not run alone runs twice (see above): only its first copy is kept
        rows_in = active.repeat(2) if active.numel() == 1 and not alone else active

        trips: list[int] = []

        def pick(leaf: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
            return leaf if rows is None else rows.index_select(0, rows_in)

        def rest(
            leaves: list[torch.Tensor], args: list[torch.Tensor], flags: torch.Tensor
        ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
            everything = list(arg_leaves)
            for i, leaf in zip(tensor_args, args, strict=True):
                everything[i] = leaf
            bound = _tree.unflatten(arg_spec, everything)
            guarded = _guarded(compactable.step_on(bound), compat.vmap_level())
            out, count, flags, ran = _loop(
                guarded,
                _tree.unflatten(state_spec, leaves),
                flags,
                maxiter,
                check_every,
                None,
                until_compactable=True,
            )
            trips.append(ran)
            return _tree.flatten(out)[0], count, flags

        state_dims = [None if rows is None else 0 for _, rows in state_rows]
        arg_dims = [None if rows is None else 0 for _, rows in arg_rows]
        picked = (
            [pick(leaf, rows) for leaf, (_, rows) in zip(state_leaves, state_rows, strict=True)],
            [pick(arg_leaves[i], rows) for i, (_, rows) in zip(tensor_args, arg_rows, strict=True)],
            plain_done.index_select(0, rows_in),
        )
        if alone:  # the last few elements: each row by itself, in turn, outside the transforms
            runs = []
            with compat.outside_transforms():
                for i in range(active.numel()):
                    compactable.resume(start)  # each from the same iteration number
                    row = [
                        [t if d is None else t[i] for t, d in zip(ts, dims, strict=True)]
                        for ts, dims in ((picked[0], state_dims), (picked[1], arg_dims))
                    ]
                    runs.append(rest(row[0], row[1], picked[2][i]))
                new_leaves = [torch.stack(ts) for ts in zip(*(r[0] for r in runs), strict=True)]
                count = torch.stack([r[1] for r in runs])
                flags = torch.stack([r[2] for r in runs])
            ran = max(trips)
            compactable.resume(start + ran)
        else:
            new_leaves, count, flags = torch.func.vmap(rest, in_dims=(state_dims, arg_dims, 0))(
                *picked
            )
            kept = active.numel()
            new_leaves, count, flags = [t[:kept] for t in new_leaves], count[:kept], flags[:kept]
            ran = trips[0]
        outputs = [*new_leaves, count, flags]
        if any(compat.is_transformed(t) for t in outputs):
            return None  # batched outside the fresh vmap: a closure over a batched tensor
        if torch.is_grad_enabled() and any(t.requires_grad for t in outputs):
            return None  # a graph through a captured tensor: leave autograd the plain loop

        # Scatter the active rows into new full tensors (the done rows keep their values).
        def scatter(old: torch.Tensor, rows: torch.Tensor | None, new: torch.Tensor) -> Any:
            base = old.expand(size, *old.shape) if rows is None else rows
            if base.dtype != new.dtype or base.shape[1:] != new.shape[1:]:
                raise _Unsound
            return compat.rebatch(base.index_copy(0, active, new), level)

        leaves = [
            scatter(old, rows, new)
            for old, (_, rows), new in zip(state_leaves, state_rows, new_leaves, strict=True)
        ]
        zeros = torch.zeros(size, dtype=count.dtype, device=count.device)
        more = compat.rebatch(zeros.index_copy(0, active, count), level)
        now_done = compat.rebatch(plain_done.index_copy(0, active, flags), level)
    except Exception:  # a refused structure, or the step failing where the full batch may not
        return None
    return _tree.unflatten(state_spec, leaves), more, now_done, ran


def _guarded(step: Step, level: int | None) -> Step:
    """``step``, raising :class:`_Unsound` when one of the results of its first call is
    batched other than directly at ``level`` (the fresh ``vmap``; ``None`` for an element
    run alone outside the transforms, whose results must be plain): it read a tensor batched
    outside, and the compacted run is abandoned early. (Later calls are not checked: the
    results of the whole run are, when it leaves the fresh ``vmap``.)"""
    first = [True]

    def checked_step(state: Any) -> tuple[Any, torch.Tensor]:
        new_state, finished = step(state)
        if first[0]:
            for leaf in [*_tree.flatten(new_state)[0], finished]:
                if not isinstance(leaf, torch.Tensor) or (
                    compat.is_transformed(leaf)
                    and (level is None or not compat.batched_at(leaf, level))
                ):
                    raise _Unsound
            first[0] = False
        return new_state, finished

    return checked_step
