"""The code blocks of ``docs/nn.md`` run as written, in order (they build on each other)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "nn.md"


def test_nn_guide_python_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([16, 2])" in printed
    assert "torch.Size([4, 16, 2])" in printed
    newton = namespace["NewtonInnerNet"]
    assert callable(newton)
