"""Measuring the methods of one table: probe once, count, then time them interleaved.

A :class:`Method` is one row: a zero-argument call, plus what was learned about it. The
sections build a list of them per case, :func:`probe` each one once untimed (its error, the
warnings it raised, or the failure that keeps it out of the timings), and time the survivors
together with :func:`run_methods`, call by call in turn, so every ratio within the table is a
ratio of medians measured in the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import optree
import torch
from _report import Result, failure
from _timing import Timing, samples_interleaved, synchronize

__all__ = [
    "CountingMatvec",
    "Method",
    "SavedBytes",
    "count_ops",
    "fi_backward_iterations",
    "max_abs_diff",
    "peak_cuda_bytes",
    "probe",
    "run_methods",
    "saved_bytes",
    "timed_series",
]


@dataclass
class Method:
    """One row of a table: a call to time and what is known about it.

    Attributes:
        name: the row's label in the table.
        fn: the call (forward and backward), or None when it is not run (``note`` says why).
        short: the name in plots and the headline (defaults to ``name``).
        role: the headline column (see :class:`_report.Result`), if any.
        note: a failure, ``TorchOpt not installed``, or the warnings a call raised.
    """

    name: str
    fn: Callable[[], Any] | None
    short: str = ""
    role: str | None = None
    note: str = ""
    error: float | None = None
    iters: str = "-"
    ops: int | None = None
    saved: int | None = None
    peak: int | None = None
    timing: Timing | None = None

    def result(self, case: str) -> Result:
        """This row as a :class:`Result` of ``case``."""
        return Result(
            case,
            self.short or self.name,
            self.timing,
            "" if self.timing else self.note,
            self.saved,
            self.peak,
            self.role,
        )

    def time_cell(self, unit: str = "ms") -> str:
        """``median [min, max]``, or why there is no timing."""
        return self.timing.show(unit) if self.timing else self.note


def timed_series(
    fns: Sequence[Callable[[], Any]],
    budget_s: float,
    min_repeats: int,
    max_repeats: int,
    warmup: int = 1,
) -> list[Timing]:
    """Interleaved timings of ``fns``; repeats chosen so the series takes about ``budget_s``.

    ``warmup`` calls of each run first (the last one timed to size the series); with
    ``warmup=0`` the functions must be warm already and the series is ``min_repeats`` long.
    """
    repeats = min_repeats
    if warmup:
        for _ in range(warmup - 1):
            for fn in fns:
                fn()
        one = 0.0
        for fn in fns:
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            one += time.perf_counter() - start
        repeats = max(min_repeats, min(max_repeats, round(budget_s / max(one, 1e-9))))
    return [Timing.of(x) for x in samples_interleaved(fns, repeats=repeats, warmup=0)]


def run_methods(
    methods: list[Method], budget_s: float, min_repeats: int, max_repeats: int, warmup: int = 1
) -> None:
    """Time every method that has a call, interleaved (see :func:`timed_series`)."""
    runnable = [m for m in methods if m.fn is not None]
    fns = [m.fn for m in runnable if m.fn is not None]
    timings = timed_series(fns, budget_s, min_repeats, max_repeats, warmup)
    for m, t in zip(runnable, timings, strict=True):
        m.timing = t


def max_abs_diff(out: Any, reference: Any, scale: float = 1.0) -> float:
    """The largest absolute difference between two pytrees of tensors (in float64), over
    ``scale``."""
    pairs = zip(optree.tree_leaves(out), optree.tree_leaves(reference), strict=True)
    return max(float((a.double() - b.double()).abs().max()) for a, b in pairs) / scale


def probe(m: Method, error: Callable[[Any], float] | None = None, ops: bool = True) -> None:
    """One untimed call: its error (``error(output)``), warnings and (with ``ops``) the aten
    operations of a second call (:func:`count_ops`).

    A call that raises is recorded as a failure (``fails: ...``) and not timed.
    """
    if m.fn is None:
        return
    try:
        out, warned = _with_warnings(m.fn)
    except Exception as exc:
        m.note, m.fn = failure(exc), None
        return
    if error is not None:
        m.error = error(out)
    if ops:
        m.ops = count_ops(m.fn)
    if warned:
        m.note = (m.note + "; " if m.note else "") + "warned: " + ", ".join(warned)


def _with_warnings(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Call ``fn`` once, returning its result and the distinct warning categories raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning)  # TorchOpt: functorch.vjp
        out = fn()
    return out, sorted({w.category.__name__ for w in caught})


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the file descriptor 2 (the profiler's C++ start/stop lines) for a while."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def count_ops(fn: Callable[[], Any]) -> int:
    """Profiler events (aten ops, nested ones included) of one call: a load-independent cost."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), _quiet_stderr():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def peak_cuda_bytes(fn: Callable[[], Any]) -> int:
    """Peak CUDA memory allocated during one call of ``fn``, above what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


class SavedBytes:
    """Bytes of tensors saved for backward, via ``saved_tensors_hooks``.

    Each storage counts once (a weight saved by every unrolled step is one buffer in memory)
    and only while some saved reference to it is alive; ``peak`` is the maximum of that sum.
    The hooks wrap the forward pass only: ``torch.func`` transforms refuse to run under
    saved-tensor hooks, and implicit backward passes use them.
    """

    def __init__(self) -> None:
        self.live_bytes = 0
        self.peak = 0
        self._live: dict[tuple[int, int], int] = {}

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        """The context manager to run the forward pass under."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, t: torch.Tensor) -> _Held:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        count = self._live.get(key, 0)
        if count == 0:
            self.live_bytes += key[1]
            self.peak = max(self.peak, self.live_bytes)
        self._live[key] = count + 1
        return _Held(t, key, self)

    def release(self, key: tuple[int, int]) -> None:
        """One saved reference to the storage ``key`` is gone."""
        count = self._live[key] - 1
        if count:
            self._live[key] = count
        else:
            del self._live[key]
            self.live_bytes -= key[1]


class _Held:
    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, key: tuple[int, int], meter: SavedBytes) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter.release(self.key)


def _unpack(held: _Held) -> torch.Tensor:
    return held.tensor


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Peak bytes saved for backward while ``forward()`` computes a loss (then backpropagated)."""
    meter = SavedBytes()
    with meter.hooks():
        loss = forward()
    torch.autograd.backward(loss)
    return meter.peak


class _Counting:
    """Mixin recording the iterations of every ``run`` of a funcimplicit solver (untimed)."""

    log: ClassVar[list[int]] = []

    def run(self, matvec: Any, b: Any, init: Any = None) -> Any:
        result = super().run(matvec, b, init)  # type: ignore[misc]
        _Counting.log.append(int(result.iterations.max()))
        return result


def fi_backward_iterations(run_once: Callable[[Any], Any], solver: Any) -> str:
    """Iterations of the backward linear solve(s) of ``run_once(counting copy of solver)``."""
    cls = type(f"Counting{type(solver).__name__}", (_Counting, type(solver)), {})
    fields = [f for f in dataclasses.fields(solver) if f.init]  # (NormalCG derives `inner`)
    counting = cls(**{f.name: getattr(solver, f.name) for f in fields})
    _Counting.log.clear()
    run_once(counting)
    return "+".join(str(k) for k in _Counting.log) or "-"


class CountingMatvec:
    """Wrap a TorchOpt ``solve(matvec, b)`` to count the matvec calls of one backward pass."""

    def __init__(self, solve: Callable[..., Any]) -> None:
        self.solve, self.calls = solve, 0

    def __call__(self, matvec: Callable[[Any], Any], b: Any, **kw: Any) -> Any:
        def counted(v: Any) -> Any:
            self.calls += 1
            return matvec(v)

        return self.solve(counted, b, **kw)
