"""Shared helpers for the examples: command line, seeding, progress lines and timing.

Every example is a script run as ``python examples/<name>.py [--quick] [--out DIR]``::

    from _common import parse_args, result_record, seed_everything, Progress, Timer

    args = parse_args("Learn per-feature ridge penalties.")
    seed_everything(args.seed)
    progress = Progress(total=args.steps, every=10)
    with Timer() as timer:
        for step in range(args.steps):
            ...
            progress(step, val_mse=val_mse, test_mse=test_mse)
    record = result_record("test_mse", test_mse, grid_mse, higher_is_better=False, seeds=1)
    print(f"RESULT: {json.dumps(record)}", flush=True)

``--quick`` asks for a smoke-test sized run (CI, ``tests/test_examples.py``); ``--out`` is the
folder plots are written to (created if missing). Each example's output ends with one line
``RESULT: {json}``, the record :func:`result_record` checks, printed by the example itself.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Plots are written to files: no display needed (set before any example imports pyplot).
os.environ.setdefault("MPLBACKEND", "Agg")

__all__ = [
    "DEFAULT_OUT",
    "Progress",
    "Timer",
    "parse_args",
    "result_record",
    "savefig",
    "seed_everything",
]

DEFAULT_OUT = Path(__file__).resolve().parent / "output"


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    default_threads: int | None = None,
) -> argparse.Namespace:
    """Parse ``--quick``, ``--out DIR``, ``--seed N`` and ``--threads N``; create the output folder.

    Pass your own ``parser`` (with extra options already added) to extend it; the common options
    are added to it. ``args.out`` is a :class:`pathlib.Path` that exists on return.
    ``--threads`` (default ``default_threads``; ``None`` keeps torch's choice) is applied with
    ``torch.set_num_threads``: examples on small matrices run faster on one thread, and much
    faster on a busy machine.
    """
    if parser is None:
        parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a small, fast run (CI smoke test, a few seconds)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for plots and other outputs (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help=f"torch CPU threads (default: {default_threads or 'torch default'})",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's (if installed) and torch's global generators.

    Returns a fresh ``torch.Generator`` seeded with ``seed``, for code that prefers an explicit one.
    """
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        pass
    else:
        np.random.seed(seed)  # noqa: NPY002 - the legacy global generator, for code that uses it
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Progress:
    """Print ``step  12/200  name=value ...  (3.4 s)`` every ``every`` steps and on the last one.

    Call it once per step with the step index (0-based) and named numbers; it prints on steps
    ``0, every, 2*every, ...`` and on ``total - 1``. Floats are printed with 4 significant digits.
    """

    def __init__(self, total: int, every: int = 10) -> None:
        self.total = total
        self.every = max(1, every)
        self.start = time.perf_counter()

    def __call__(self, step: int, **values: float) -> None:
        if step % self.every != 0 and step != self.total - 1:
            return
        width = len(str(self.total))
        parts = [f"{k}={_fmt(v)}" for k, v in values.items()]
        elapsed = time.perf_counter() - self.start
        head = f"step {step + 1:>{width}}/{self.total}"
        print(f"{head}  {'  '.join(parts)}  ({elapsed:.1f} s)", flush=True)


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.4g}"


class Timer:
    """A context manager that measures wall-clock seconds: ``with Timer() as t: ...; t.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start


def savefig(fig: Figure, out: Path, name: str) -> Path:
    """Save a matplotlib figure as ``out / name`` (150 dpi), close it, print and return the path."""
    import matplotlib.pyplot as plt

    path = Path(out) / name
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path}")
    return path


def result_record(
    metric: str, method: float, baseline: float, higher_is_better: bool, seeds: int
) -> dict[str, object]:
    """The example's machine-readable outcome, checked: the record an example prints last as
    ``print(f"RESULT: {json.dumps(record)}")`` (nothing may follow it), which
    ``tests/test_examples.py`` parses. Pass numbers computed by the run, never typed-in ones.
    """
    method, baseline = float(method), float(baseline)
    if not (math.isfinite(method) and math.isfinite(baseline)):
        raise ValueError(
            f"result_record: non-finite numbers (method {method}, baseline {baseline})"
        )
    return {
        "metric": metric,
        "method": method,
        "baseline": baseline,
        "higher_is_better": bool(higher_is_better),
        "seeds": int(seeds),
    }


class SavedBytes:
    """``saved_tensors_hooks`` that add up the bytes of every storage saved for backward."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())
