"""Run the benchmark suite: Markdown tables and PNG plots of funcimplicit against its peers.

From the repository root:

    PYTHONPATH=. python benchmarks/run.py                  # full run (9 minutes on 2 cores)
    PYTHONPATH=. python benchmarks/run.py --quick          # smaller run (1.5 minutes)
    PYTHONPATH=. python benchmarks/run.py --device cuda --out "$OUT/bench"

writes ``results.md`` (machine header, headline table, targets, then every section),
``<section>.md`` per section and ``<plot>.png`` per figure into ``--out`` (default
``benchmarks/results/``), and prints ``results.md`` on standard output (progress goes to
standard error). Every figure is ``median [min, max]`` over repeats after warm-up, and every
ratio compares medians of calls timed in turn in the same series. TorchOpt is an optional,
benchmark-only peer: when it is not installed its rows say so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _report import Result, Section, cpu_model, load_torchopt, progress, source_fingerprint, table
from _timing import others_load, synchronize_with, wait_for_quiet
from auto import section_auto
from deq import section_deq
from imaml import section_imaml
from implicit import section_logistic, section_ridge
from inner_solvers import section_inner
from linear_solvers import section_linear
from overhead import section_overhead

import funcimplicit as fi

SectionFn = Callable[[bool, str, Any], Section]
SECTIONS: dict[str, SectionFn] = {
    "ridge": section_ridge,
    "logistic": section_logistic,
    "imaml": section_imaml,
    "deq": section_deq,
    "linear": section_linear,
    "inner": section_inner,
    "overhead": section_overhead,
    "auto": section_auto,
}
ALL = [*SECTIONS, "compiled"]
FULL_ONLY = ("inner", "compiled")  # left out of --quick unless named: they take minutes
HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------
# The section of benchmarks/compiled.py, run in its own process


def section_compiled(quick: bool, device: str, threads: int) -> Section:
    """``benchmarks/compiled.py`` in a fresh process with a fresh inductor cache (cold compile
    times), its Markdown output taken as it is, headings moved two levels down."""
    sec = Section("compiled", "torch.compile: compiled vs eager (benchmarks/compiled.py)")
    script = os.path.join(HERE, "compiled.py")
    if not os.path.exists(script):
        sec.markdown.append("_benchmarks/compiled.py is not present in this checkout._")
        return sec
    args = [sys.executable, script, "--device", device, *(["--quick"] if quick else [])]
    if threads > 0:
        args += ["--threads", str(threads)]
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        sec.markdown.append(f"**fails** (exit status {done.returncode}):\n\n```\n{tail}\n```")
        return sec
    lines = [("##" + line) if line.startswith("#") else line for line in done.stdout.splitlines()]
    sec.markdown.append("\n".join(lines).strip())
    return sec


# ----------------------------------------------------------------------------------------------
# Headline and targets

_LABELS = {"ridge": "ridge", "logistic": "logistic", "imaml": "iMAML", "deq": "DEQ"}
_ROLES = ("fi", "fi compiled", "TorchOpt", "unrolled")


def _ratio(num: Result | None, den: Result | None) -> float | None:
    if num is None or den is None or num.timing is None or den.timing is None:
        return None
    return num.timing.median / den.timing.median


def headline(sections: list[Section]) -> str:
    """One row per problem instance: funcimplicit, compiled, TorchOpt, unrolled, ratios."""
    rows = []
    for sec in sections:
        if sec.key not in _LABELS:
            continue
        for case in dict.fromkeys(r.case for r in sec.results):
            by_role = {r.role: r for r in sec.results if r.case == case and r.role}
            if not by_role:
                continue
            cells = []
            for role in _ROLES:
                r = by_role.get(role)
                if r is None:
                    cells.append("-")
                elif r.timing is None:
                    cells.append(r.note)
                elif r.method in ("funcimplicit", "TorchOpt", "unrolled"):
                    cells.append(r.timing.show("ms"))
                else:
                    cells.append(f"{r.timing.show('ms')} ({r.method})")
            ratios = [_ratio(by_role.get(k), by_role.get("fi")) for k in ("TorchOpt", "unrolled")]
            failures = [
                f"{r.method}: {r.note}"
                for r in sec.results
                if r.case == case and r.note.startswith("fails")
            ]
            rows.append(
                [
                    f"{_LABELS[sec.key]}, {case}",
                    *cells,
                    *("-" if x is None else f"**{x:.2f}**" for x in ratios),
                    "; ".join(failures),
                ]
            )
    header = ["problem", "funcimplicit eager ms", "funcimplicit compiled ms", "TorchOpt ms"]
    header += ["unrolled (plain PyTorch) ms", "TorchOpt / fi", "unrolled / fi", "failures"]
    return table(header, rows)


def _find(sections: list[Section], key: str, case: str, method: str) -> Result | None:
    for sec in sections:
        if sec.key == key:
            for r in sec.results:
                if r.case == case and (r.method == method or r.role == method):
                    return r
    return None


def targets(sections: list[Section], quick: bool) -> str:
    """The performance targets, each with the ratios measured in this run (reported only)."""
    rows = []

    def speedups(cases: list[tuple[str, str]]) -> list[tuple[str, float | None]]:
        out = []
        for key, case in cases:
            r = _ratio(_find(sections, key, case, "TorchOpt"), _find(sections, key, case, "fi"))
            out.append((f"{_LABELS[key]} {case}", r))
        return out

    def verdict(values: list[tuple[str, float | None]], good: Callable[[float], bool]) -> str:
        known = [v for _, v in values if v is not None]
        if not known:
            return "not measured"
        met = sum(good(v) for v in known)
        return "**met**" if met == len(known) else f"**not met** ({met} of {len(known)})"

    def show(values: list[tuple[str, float | None]]) -> str:
        return "; ".join(f"{name}: {'-' if v is None else f'{v:.2f}x'}" for name, v in values)

    small = speedups(
        [("ridge", "d = 100")]
        + [("logistic", f"K = {k}") for k in (10, 100, 1000)]
        + [("deq", "batch 32, hidden 128")]
    )
    d100 = "d = 100"
    ridge_compiled = _ratio(
        _find(sections, "ridge", d100, "TorchOpt"), _find(sections, "ridge", d100, "fi compiled")
    )
    rows.append(
        [
            "funcimplicit eager >= 5x faster than TorchOpt on small problems (TorchOpt / fi)",
            show(small)
            + ("" if ridge_compiled is None else f" (ridge compiled: {ridge_compiled:.2f}x)"),
            verdict(small, lambda v: v >= 5),
        ]
    )
    large = speedups([("ridge", "d = 1000")])
    rows.append(
        [
            "never slower than TorchOpt on large problems (TorchOpt / fi >= 0.95: equal "
            "within the 5% this ratio moves between runs)",
            show(large),
            verdict(large, lambda v: v >= 0.95),
        ]
    )
    few = "16 tasks"
    loop = _find(sections, "imaml", few, "TorchOpt loop")
    vmapped = [
        (f"eager vmap, {few}", _ratio(loop, _find(sections, "imaml", few, "funcimplicit vmap")))
    ]
    compiled = _ratio(loop, _find(sections, "imaml", few, "funcimplicit compiled"))
    rows.append(
        [
            "vmap over 16 tasks >= 20x faster than TorchOpt's per-task loop (loop / vmap)",
            show(vmapped) + ("" if compiled is None else f" (compiled: {compiled:.2f}x)"),
            verdict(vmapped, lambda v: v >= 20),
        ]
    )
    memory = []
    for method in ("funcimplicit", "TorchOpt", "unrolled"):
        first = _find(sections, "logistic", "K = 10", method)
        last = _find(sections, "logistic", "K = 1000", method)
        if first and last and first.saved_bytes and last.saved_bytes:
            memory.append((method, last.saved_bytes / first.saved_bytes))
    flat = [v for name, v in memory if name == "funcimplicit"]
    rows.append(
        [
            "implicit memory flat in K (saved bytes at K = 1000 / K = 10)",
            "; ".join(f"{name}: {v:.2f}x" for name, v in memory) or "-",
            "not measured" if not flat else ("**met**" if flat[0] <= 1.05 else "**not met**"),
        ]
    )
    note = " (--quick: fewer repeats)" if quick else ""
    return table(["target" + note, "measured in this run", "verdict"], rows)


# ----------------------------------------------------------------------------------------------
# Header and output


def machine_header(device: str, threads_default: int, to: Any | None, quiet: bool) -> list[str]:
    """The lines that say where and how the numbers were measured."""
    load = os.getloadavg()
    _, others = others_load(lambda: time.sleep(1.0))
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        memory = f"{props.total_memory / 2**30:.0f} GiB"
        dev = f"CUDA: {props.name} ({memory}), CUDA {torch.version.cuda}"
    else:
        dev = "CPU"
    versions = f"torch {torch.__version__}, funcimplicit {fi.__version__} (sources "
    versions += f"{source_fingerprint()}), TorchOpt "
    versions += getattr(to, "__version__", "?") if to is not None else "not installed"
    return [
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores; Python "
        f"{platform.python_version()} on {platform.system()}",
        f"- device: {dev}",
        f"- {versions}",
        f"- threads: {torch.get_num_threads()} intra-op (torch.get_num_threads(); default "
        f"{threads_default}), {torch.get_num_interop_threads()} inter-op",
        f"- load: average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at "
        f"start; other processes used {others:.2f} CPU during a 1 s sample"
        + ("" if quiet else " (the machine did not get quiet before the run)"),
        "- every figure: median [min, max] over repeats after warm-up; the methods of one "
        "table are timed call by call in turn, so ratios are of medians from one series",
        *([] if _plots_available() else ["- plots: none (matplotlib is not installed)"]),
    ]


def _plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_section(out: str, header: list[str], sec: Section) -> str:
    """Write ``<key>.md`` and the section's PNGs; return the section's Markdown."""
    os.makedirs(out, exist_ok=True)
    figures = []
    if _plots_available():
        from _plots import draw

        figures = draw(sec, out)
    text = sec.text() + "".join(f"\n![{name}]({name})\n" for name in figures)
    with open(os.path.join(out, f"{sec.key}.md"), "w") as f:
        f.write(f"# funcimplicit benchmarks: {sec.key}\n\n" + "\n".join(header) + "\n\n" + text)
    return text.rstrip()


def write_results(
    out: str, header: list[str], sections: list[tuple[Section, str]], quick: bool, end: str
) -> str:
    """Write ``results.md`` from the sections done so far; return its text."""
    parts = ["# funcimplicit benchmarks" + (" (--quick)" if quick else ""), "\n".join(header)]
    measured = [sec for sec, _ in sections if sec.results]
    parts += ["## Headline", headline(measured), "## Targets", targets(measured, quick)]
    parts += [text for _, text in sections]
    parts.append(end)
    text = "\n\n".join(parts) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run the chosen sections and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (1.5 minutes)")
    parser.add_argument(
        "--out",
        default=os.path.join(HERE, "results"),
        help="folder for results.md, the per-section files and the PNGs (default %(default)s)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: steady figures on a shared machine, where a "
        "second thread waiting for a busy core slows small ops many-fold; 0 keeps torch's "
        "default)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=ALL,
        metavar="SECTION",
        help=f"sections to run, of {' '.join(ALL)} (default: all; with --quick all but "
        f"{' and '.join(FULL_ONLY)})",
    )
    parser.add_argument("--no-torchopt", action="store_true", help="run as if TorchOpt were absent")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")

    # TorchOpt 0.7.3 calls the deprecated functorch.vjp on every backward pass.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*functorch.vjp.*")
    to = load_torchopt(args.no_torchopt)
    default_threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    synchronize_with(args.device)
    start = time.perf_counter()
    quiet = wait_for_quiet(max_wait_s=5.0 if args.quick else 10.0)
    header = machine_header(args.device, default_threads, to, quiet)
    cache = tempfile.mkdtemp(prefix="inductor-")  # cold compiles: a fresh inductor cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    chosen = args.sections or [k for k in ALL if not (args.quick and k in FULL_ONLY)]
    done: list[tuple[Section, str]] = []
    try:
        for k, key in enumerate(chosen):
            progress(f"section {key}")
            try:
                if key == "compiled":
                    sec = section_compiled(args.quick, args.device, args.threads)
                else:
                    sec = SECTIONS[key](args.quick, args.device, to)
            except Exception:
                sec = Section(key, f"{key}: the section failed")
                sec.markdown.append(f"```\n{traceback.format_exc()}```")
            done.append((sec, write_section(args.out, header, sec)))
            # Rewritten after every section, so an interrupted run keeps what it measured.
            elapsed = time.perf_counter() - start
            load = os.getloadavg()
            end = f"_Wall time {elapsed:.0f} s"
            end += f" ({k + 1} of {len(chosen)} sections)" if k + 1 < len(chosen) else ""
            end += f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}._"
            text = write_results(args.out, header, done, args.quick, end)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(text)
    progress(f"wrote {os.path.join(args.out, 'results.md')}")


if __name__ == "__main__":
    main()
