"""Running the repository's scripts (examples, benchmarks) from tests, as a user would."""

from __future__ import annotations

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
    """:func:`run_script` plus the examples' contract: a last line starting with ``RESULT:``
    and no ``ConvergenceWarning``. Returns the non-empty stdout lines and the report."""
    proc, report = run_script(command, cwd=cwd, timeout_s=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, report
    assert lines[-1].startswith("RESULT:"), report
    assert "ConvergenceWarning" not in proc.stderr, report
    return lines, report
