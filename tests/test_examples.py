"""Smoke-run every example in ``examples/`` with ``--quick``, as CI does.

Each example must exit 0, print a final line starting with ``RESULT:``, raise no
``ConvergenceWarning`` and write its plots to ``--out``. To add an example, append its name to
``EXAMPLES`` (and the files it writes to ``OUTPUTS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scripts import run_example

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# Script names in examples/, without ".py".
# examples/distributed_imaml.py runs under torchrun with two processes in tests/test_distributed.py.
EXAMPLES = [
    "ridge_hyperparameters",
    "logistic_weight_decay",
    "dataset_distillation",
    "imaml_digits",
    "deq_digits",
]

# Files each example must write to its --out folder.
OUTPUTS: dict[str, list[str]] = {
    "ridge_hyperparameters": ["ridge_hyperparameters.png"],
    "logistic_weight_decay": ["logistic_weight_decay.png"],
    "dataset_distillation": ["dataset_distillation.png"],
    "imaml_digits": ["imaml_digits.png"],
    "deq_digits": ["deq_digits.png"],
}

TIMEOUT_S = 300  # --quick runs take seconds; this only stops a hang


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_quick(name: str, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    script = EXAMPLES_DIR / f"{name}.py"
    assert script.is_file(), f"{script} is listed in EXAMPLES but does not exist"
    run_example(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        cwd=EXAMPLES_DIR.parent,
        timeout_s=TIMEOUT_S,
    )
    for output in OUTPUTS.get(name, []):
        path = tmp_path / output
        assert path.is_file(), f"{name} did not write {output}"
        assert path.stat().st_size > 0, f"{name} wrote an empty {output}"
