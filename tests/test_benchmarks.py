"""The benchmark suite still runs: ``benchmarks/run.py --quick`` end to end, without TorchOpt.

Timings are never asserted here (they live in ``docs/benchmarks.md``); what is checked is that
every section runs against the current library, that no funcimplicit row failed (only peers may
record failures), and that every funcimplicit result agrees with its section's reference (the
``error`` columns are checked by the sections themselves and would show as failures).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from scripts import run_script

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # about 80 s on a quiet 2-core machine; this only stops a hang
# The sections --quick runs by default ("inner" and "compiled" take minutes: left out).
QUICK_SECTIONS = ["ridge", "logistic", "imaml", "deq", "linear", "overhead", "auto"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-torchopt"]
    _, report = run_script(
        [*command, "--out", str(out)], cwd=ROOT, timeout_s=TIMEOUT_S, env={"PYTHONPATH": str(ROOT)}
    )
    for section in QUICK_SECTIONS:
        assert (out / f"{section}.md").is_file(), f"no {section}.md written\n{report}"
    assert list(out.glob("*.png")), f"no plot written\n{report}"
    return (out / "results.md").read_text()


def test_every_quick_section_reports(results: str) -> None:
    headings = re.findall(r"^## (.+)$", results, re.M)
    # Headline, targets, then one heading per section.
    assert len(headings) >= 2 + len(QUICK_SECTIONS), headings
    # A section that raises still writes its heading ("## deq: the section failed", with the
    # traceback): that must fail here (it went unnoticed once, found by a GPU run).
    failed = [h for h in headings if h.endswith("the section failed")]
    assert not failed, results[results.find("the section failed") - 40 :][:3000]


def method_of(row: str) -> str:
    """The first cell of a table row that is not a number (the method or problem name)."""
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    return next((cell for cell in cells if not re.fullmatch(r"[\d.,x ]*", cell)), "")


def test_no_funcimplicit_row_fails(results: str) -> None:
    rows = [line for line in results.splitlines() if line.startswith("| ")]
    ours = [row for row in rows if method_of(row).startswith("funcimplicit")]
    assert ours, "no funcimplicit rows found: has the table layout changed?"
    failed = [row for row in ours if "fails:" in row]
    assert not failed, "funcimplicit rows that failed:\n" + "\n".join(failed)


def test_torchopt_absence_is_said(results: str) -> None:
    # Without the peer, its rows say why they are empty (never silently missing).
    assert "TorchOpt not installed" in results


def test_before_after_runs_against_an_earlier_revision(tmp_path: Path) -> None:
    """``benchmarks/before_after.py`` imports a revision from git beside this checkout; run
    against HEAD itself, both columns exist and every row is filled."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: before_after.py reads the earlier revision from git")
    command = [sys.executable, str(ROOT / "benchmarks" / "before_after.py"), "--quick"]
    _, report = run_script(
        [*command, "--before", "HEAD", "--out", str(tmp_path)],
        cwd=ROOT,
        timeout_s=TIMEOUT_S,
        env={"PYTHONPATH": str(ROOT)},
    )
    table = (tmp_path / "before_after.md").read_text().splitlines()
    assert table[0] == "| row (target) | before (HEAD) | after (this checkout) |", report
    rows = table[2:]
    assert len(rows) == 7, report  # --quick leaves out the two compiled rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3, row
        assert all(cells), row
