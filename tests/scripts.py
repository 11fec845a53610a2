"""Running the repository's scripts (examples, benchmarks) from tests, as a user would."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path


def run_script(
    command: list[str], *, cwd: Path, timeout_s: float, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``command`` headless (Agg plots, warnings shown); assert it exits 0.

    Returns the finished process and a report (the tails of stdout and stderr) for the
    caller's own assertion messages.
    """
    full_env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "default", **(env or {})}
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=full_env,
        check=False,
    )
    report = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    return proc, report


def run_example(command: list[str], *, cwd: Path, timeout_s: float) -> tuple[list[str], str]:
    """:func:`run_script` plus the examples' contract: a last line ``RESULT: {json}`` that
    :func:`parse_result` accepts, and no ``ConvergenceWarning``. Returns the non-empty stdout
    lines and the report."""
    proc, report = run_script(command, cwd=cwd, timeout_s=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, report
    assert lines[-1].startswith("RESULT:"), report
    parse_result(lines[-1])
    assert "ConvergenceWarning" not in proc.stderr, report
    return lines, report


RESULT_KEYS = {"metric", "method", "baseline", "higher_is_better", "seeds"}


def parse_result(line: str) -> dict[str, object]:
    """The record of a ``RESULT: {json}`` line, checked: exact keys, types, finite numbers."""
    prefix = "RESULT: "
    assert line.startswith(prefix), f"not a RESULT line: {line!r}"
    record = json.loads(line[len(prefix) :])
    assert isinstance(record, dict), f"RESULT is not a JSON object: {line!r}"
    assert set(record) == RESULT_KEYS, f"RESULT keys {sorted(record)} != {sorted(RESULT_KEYS)}"
    assert isinstance(record["metric"], str), line
    assert record["metric"], line
    for key in ("method", "baseline"):
        value = record[key]
        assert type(value) in (int, float), line  # bool is an int subclass: refused
        assert math.isfinite(value), line
    assert isinstance(record["higher_is_better"], bool), line
    seeds = record["seeds"]
    assert type(seeds) is int, line
    assert seeds >= 1, line
    return record
