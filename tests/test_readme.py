"""The README's code blocks run as written (they are the first thing users copy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README should show code"
    namespace: dict[str, object] = {}
    for block in blocks:  # blocks build on each other, like a reader's session
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "tensor" in printed  # the examples print their results
