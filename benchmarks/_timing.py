"""Wall-clock timing shared by the benchmark scripts: median, min and max after warm-up.

Every figure a benchmark prints is a :class:`Timing` (seconds per call) taken with
``time.perf_counter``. The garbage collector is paused while timing, as ``timeit`` does;
``torch.set_num_threads`` is left at its default. On a shared machine other processes can
slow a series down uniformly (with two threads per op on two cores, a competing process
stalls every parallel region), which no median removes: :func:`others_load` measures how
much CPU the rest of the machine used meanwhile (Linux ``/proc``), so a disturbed series
can be flagged or repeated, and :func:`wait_for_quiet` waits for a calm moment.

On a GPU, work is queued asynchronously: :func:`synchronize_with` makes every timed call
wait for the device before its clock stops.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Timing",
    "measure",
    "measure_interleaved",
    "others_load",
    "samples_interleaved",
    "synchronize",
    "synchronize_with",
    "wait_for_quiet",
]

_device = ["cpu"]  # the device whose queued work a timed call waits for


def synchronize_with(device: str) -> None:
    """Make timed calls wait for ``device`` (``"cpu"`` or ``"cuda"``) before stopping the clock."""
    _device[0] = device


def synchronize() -> None:
    """Wait for the work queued on the device chosen by :func:`synchronize_with` (CUDA only)."""
    if _device[0] == "cuda":
        import torch

        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls."""

    median: float
    min: float
    max: float
    repeats: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def show(self, unit: str = "ms") -> str:
        """``median [min, max]`` in ``unit`` (``"s"``, ``"ms"`` or ``"us"``)."""
        k = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        return f"{_num(self.median * k)} [{_num(self.min * k)}, {_num(self.max * k)}]"


def _num(value: float) -> str:
    """Three significant digits or so, without scientific notation."""
    size = abs(value)
    digits = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 1 else 3
    return f"{value:.{digits}f}"


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int | None = None,
    warmup: int = 1,
    budget_s: float = 0.5,
    min_repeats: int = 3,
    max_repeats: int = 50,
) -> Timing:
    """Time ``fn()`` after ``warmup`` untimed calls (at least one when ``repeats`` is None).

    With ``repeats=None`` the count is chosen from the last warm-up call so that the timed
    calls take about ``budget_s``, clamped to ``[min_repeats, max_repeats]``.
    """
    if repeats is None:
        for _ in range(max(warmup, 1) - 1):
            fn()
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        one = time.perf_counter() - start
        repeats = max(min_repeats, min(max_repeats, round(budget_s / max(one, 1e-9))))
        warmup = 0
    return measure_interleaved([fn], repeats=repeats, warmup=warmup)[0]


def measure_interleaved(
    fns: Sequence[Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> list[Timing]:
    """Time several functions call by call in turn, so slow drift hits them all alike.

    Returns one :class:`Timing` per function (:func:`samples_interleaved` gives the raw
    samples, paired by repeat, for per-repeat differences).
    """
    return [Timing.of(s) for s in samples_interleaved(fns, repeats=repeats, warmup=warmup)]


def samples_interleaved(
    fns: Sequence[Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> list[list[float]]:
    """Raw seconds per call, ``[function][repeat]``, with calls alternating between functions."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    synchronize()
    samples: list[list[float]] = [[] for _ in fns]
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, out in zip(fns, samples, strict=True):
                start = time.perf_counter()
                fn()
                synchronize()
                out.append(time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return samples


def _cpu_ticks() -> tuple[int, int] | None:
    """``(busy ticks of the whole machine, ticks of this process)``, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])


def others_load(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn()``; return its result and the CPUs other processes kept busy meanwhile
    (0.0 = none, 1.0 = one core's worth on average; NaN where it cannot be read)."""
    before, start = _cpu_ticks(), time.perf_counter()
    result = fn()
    after, elapsed = _cpu_ticks(), time.perf_counter() - start
    if before is None or after is None or elapsed <= 0:
        return result, float("nan")
    others = (after[0] - before[0]) - (after[1] - before[1])
    return result, max(others, 0) / os.sysconf("SC_CLK_TCK") / elapsed


def wait_for_quiet(
    *, threshold: float = 0.1, window_s: float = 1.0, max_wait_s: float = 30.0
) -> bool:
    """Sleep until other processes use under ``threshold`` CPUs for ``window_s``; give up
    after ``max_wait_s``. Returns whether it got quiet."""
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        _, load = others_load(lambda: time.sleep(window_s))
        if not load >= threshold:  # also true for NaN: nothing to wait for
            return True
    return False
