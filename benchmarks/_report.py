"""What a benchmark section hands back: Markdown text, measured results and the plots to draw.

Every section of ``run.py`` returns a :class:`Section`. Its Markdown (paragraphs and tables)
goes into the results page as it is; its :class:`Result` records feed the plots, the headline
table and the targets, so those never re-parse Markdown.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from _timing import Timing

__all__ = [
    "NOT_INSTALLED",
    "Plot",
    "Result",
    "Section",
    "cpu_model",
    "failure",
    "load_torchopt",
    "progress",
    "source_fingerprint",
    "table",
]

NOT_INSTALLED = "TorchOpt not installed"
_START = time.perf_counter()


@dataclass(frozen=True)
class Result:
    """One measured method on one case (a row of a table, a bar of a plot).

    Attributes:
        case: the problem instance, e.g. ``"d = 100"`` or ``"K = 1000"``.
        method: a short name, used as the plot legend and the key of the headline table.
        timing: seconds per call, or None when the method failed or was not run.
        note: why there is no timing (``"fails: ..."``, ``"TorchOpt not installed"``).
        saved_bytes: bytes saved for backward by the forward pass, where measured.
        peak_bytes: peak CUDA memory allocated during one call above the memory before it.
        role: the method's column in the headline table (``"fi"``, ``"fi compiled"``,
            ``"TorchOpt"``, ``"unrolled"``), or None when it is not in the headline.
    """

    case: str
    method: str
    timing: Timing | None
    note: str = ""
    saved_bytes: int | None = None
    peak_bytes: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class Plot:
    """A figure to draw from a section's results (see ``_plots.py``).

    Attributes:
        name: file name without extension.
        title: the figure's title.
        cases: the cases shown, in order (groups of bars, or points on the x axis).
        methods: the methods shown, in order (bars within a group, or lines).
        kind: ``"bars"`` (grouped bars of the median time, whiskers min to max) or
            ``"memory"`` (time and saved bytes against the cases, two panels).
    """

    name: str
    title: str
    cases: tuple[str, ...]
    methods: tuple[str, ...]
    kind: Literal["bars", "memory"] = "bars"


@dataclass
class Section:
    """One section of the results page.

    Attributes:
        key: short name (``--sections`` and the per-section file ``<key>.md``).
        title: heading of the section.
        markdown: paragraphs and tables, in order.
        results: the measurements behind the tables.
        plots: the figures to draw from ``results``.
    """

    key: str
    title: str
    markdown: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)

    def text(self) -> str:
        """The section as Markdown, with its heading."""
        return f"## {self.title}\n\n" + "\n\n".join(self.markdown) + "\n"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (a ``|`` inside a cell is escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + [line(r) for r in rows])


def failure(exc: BaseException) -> str:
    """``fails: <exception type>: <first line of its message>``, shortened for a table cell."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(msg) > 110:
        msg = msg[:107] + "..."
    return f"fails: {type(exc).__name__}" + (f": {msg}" if msg else "")


def progress(what: str) -> None:
    """A progress line on standard error, with the time since start."""
    print(f"  ... {what} ({time.perf_counter() - _START:.0f} s)", file=sys.stderr, flush=True)


def load_torchopt(disabled: bool) -> Any | None:
    """TorchOpt if importable (and not disabled), else None."""
    if disabled:
        return None
    try:
        import torchopt
    except ImportError:
        return None
    return torchopt


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_fingerprint() -> str:
    """A short hash of the library's sources, to tell which version the numbers belong to."""
    import funcimplicit

    folder = os.path.dirname(os.path.abspath(funcimplicit.__file__))
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    digest.update(os.path.relpath(path, folder).encode() + b"\0" + f.read())
    return digest.hexdigest()[:12]
