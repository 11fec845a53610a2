"""The public API's types, checked by mypy over ``typing/`` (issue 7).

``typing/pass`` must check clean and run, ``typing/reveal`` holds ``assert_type`` of results,
and ``typing/fail`` holds wrong calls, each marked with the exact ``# type: ignore[code]``:
with ``warn_unused_ignores`` a call the checker accepts fails the run. mypy exiting 0 on each
folder is the assertion. One run per folder (file names repeat across folders), sharing one
cache so that only the first pays for reading torch's stubs (about 10 s; then about 1 s each).
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import funcimplicit as fi

pytest.importorskip("mypy", reason="the type tests need mypy (pip install -e '.[dev]')")

pytestmark = pytest.mark.typing

ROOT = Path(__file__).resolve().parents[1]
TYPING = ROOT / "typing"
FOLDERS = ("pass", "reveal", "fail")
PASS_FILES = sorted((TYPING / "pass").glob("*.py"))


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def _files(folder: str) -> list[Path]:
    return sorted((TYPING / folder).glob("*.py"))


@pytest.mark.parametrize("folder", FOLDERS)
def test_mypy_accepts_folder(folder: str, mypy_cache: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(TYPING / "mypy.ini"),
        "--cache-dir",
        str(mypy_cache),
        str(TYPING / folder),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"mypy on typing/{folder}:\n{output}"
    assert f"no issues found in {len(_files(folder))} source files" in output, output


def test_folders_hold_what_they_claim() -> None:
    for path in _files("reveal"):
        assert "assert_type(" in path.read_text(), f"{path.name}: a reveal file without assert_type"
    for path in _files("fail"):
        ignores = re.findall(r"# type: ignore\[([\w\-, ]+)\]", path.read_text())
        assert ignores, f"{path.name}: a fail file without a single wrong call"
    assert not (TYPING / "__init__.py").exists(), "typing/ must not shadow the typing module"


# Public names without reveal tests yet (none: keep it that way).
_PENDING: set[str] = set()


def test_reveal_covers_every_public_name() -> None:
    text = "\n".join(path.read_text() for path in _files("reveal"))
    missing = [
        name
        for name in fi.__all__
        if name not in _PENDING and not re.search(rf"\bfi\.{name}\b", text)
    ]
    assert not missing, f"public names without a reveal test in typing/reveal: {missing}"


@pytest.mark.parametrize("path", PASS_FILES, ids=[path.stem for path in PASS_FILES])
def test_pass_file_runs(path: Path) -> None:
    # Under the suite's filterwarnings = error: a ConvergenceWarning fails the example too.
    runpy.run_path(str(path), run_name="__main__")
