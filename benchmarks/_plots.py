"""PNG figures of the benchmark results (matplotlib, Agg backend).

Bars show the median time per call with whiskers from the minimum to the maximum, on a log
scale; a method without a timing (a failure, a peer that is not installed, a row not run)
gets a short label at the foot of its slot instead of a bar, so it is never silently missing.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from _report import Plot, Result, Section
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["draw"]

_DPI = 100


def draw(section: Section, folder: str) -> list[str]:
    """Draw every plot of ``section`` into ``folder``; returns the file names written."""
    names = []
    for plot in section.plots:
        found = {(r.case, r.method): r for r in section.results}
        fig = _memory(plot, found) if plot.kind == "memory" else _bars(plot, found)
        name = f"{plot.name}.png"
        fig.savefig(os.path.join(folder, name), dpi=_DPI)
        plt.close(fig)
        names.append(name)
    return names


def _why(r: Result | None) -> str:
    """A short label for a slot without a timing ("" when there is one)."""
    if r is not None and r.timing is not None:
        return ""
    if r is None:
        return "not run"
    if r.note.startswith("fails"):
        return "fails"
    if "installed" in r.note:
        return "not installed"
    return "not run"


def _bars(plot: Plot, found: dict[tuple[str, str], Result]) -> Figure:
    """Grouped bars: one group per case, one bar per method."""
    many = len(plot.cases) > 4
    fig, ax = plt.subplots(figsize=(10 if many else 7.5, 4.2 if many else 3.8))
    width = 0.8 / len(plot.methods)
    cmap = plt.get_cmap("tab10")
    handles = []
    for j, method in enumerate(plot.methods):
        missing = {_why(found.get((case, method))) for case in plot.cases}
        missing -= {""}
        label = method + (f" ({', '.join(sorted(missing))})" if missing else "")
        handles.append(Patch(color=cmap(j % 10), label=label))
        xs, meds, lows, highs = [], [], [], []
        for i, case in enumerate(plot.cases):
            x = i + (j - (len(plot.methods) - 1) / 2) * width
            r = found.get((case, method))
            if r is None or r.timing is None:
                ax.text(
                    x,
                    0.02,
                    _why(r),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    transform=ax.get_xaxis_transform(),
                    color=cmap(j % 10),
                )
                continue
            t = r.timing
            xs.append(x)
            meds.append(t.median * 1e3)
            lows.append((t.median - t.min) * 1e3)
            highs.append((t.max - t.median) * 1e3)
        ax.bar(xs, meds, width, color=cmap(j % 10))
        ax.errorbar(xs, meds, yerr=[lows, highs], fmt="none", ecolor="black", lw=0.8, capsize=2)
    ax.set_yscale("log")
    ax.set_ylabel("time per call, ms (log)")
    ax.set_xticks(range(len(plot.cases)), plot.cases, fontsize=7 if many else 9)
    ax.set_title(plot.title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=2 if len(plot.methods) > 4 else 1, loc="upper left")
    fig.tight_layout()
    return fig


def _memory(plot: Plot, found: dict[tuple[str, str], Result]) -> Figure:
    """Time and saved bytes of each method against the cases (two panels)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    styles = [("o", "-", 7), ("s", "--", 4), ("^", ":", 5)]
    for method, (marker, line, size) in zip(plot.methods, styles, strict=False):
        rs = [found.get((case, method)) for case in plot.cases]
        if not all(r is not None and r.timing is not None for r in rs):
            why = _why(next((r for r in rs if r is None or r.timing is None), None))
            left.plot([], [], label=f"{method} ({why})")
            continue
        timed = [r for r in rs if r is not None and r.timing is not None]
        meds = [r.timing.median * 1e3 for r in timed if r.timing]
        lows = [(r.timing.median - r.timing.min) * 1e3 for r in timed if r.timing]
        highs = [(r.timing.max - r.timing.median) * 1e3 for r in timed if r.timing]
        xs = range(len(plot.cases))
        style = {"marker": marker, "linestyle": line, "markersize": size, "label": method}
        left.errorbar(xs, meds, yerr=[lows, highs], capsize=2, **style)
        right.plot(xs, [(r.saved_bytes or 0) / 2**20 for r in timed], **style)
    _axis(left, plot, "time per call, ms (log)")
    left.set_yscale("log")
    _axis(right, plot, "saved for backward, MB")
    right.set_ylim(bottom=0)
    left.legend(fontsize=8)
    fig.suptitle(plot.title, fontsize=10)
    fig.tight_layout()
    return fig


def _axis(ax: Axes, plot: Plot, label: str) -> None:
    ax.set_ylabel(label)
    ax.set_xticks(range(len(plot.cases)), plot.cases)
    ax.grid(which="both", alpha=0.3)
