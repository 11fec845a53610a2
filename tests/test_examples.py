"""Smoke-run every example in ``examples/`` with ``--quick``, as CI does.

Each example must exit 0, end its output with one ``RESULT: {json}`` line (parsed here: the
keys, their types and finite numbers; not whether the method wins), raise no
``ConvergenceWarning`` and write its plots to ``--out``. To add an example, append its name to
``EXAMPLES`` (and the files it writes to ``OUTPUTS``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scripts import parse_result, run_example

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# Script names in examples/, without ".py".
EXAMPLES = [
    "noisy_labels",
    "ridge_hyperparameters",
    "logistic_weight_decay",
    "dataset_distillation",
    "imaml_digits",
    "imaml_sinusoid",
    "deq_digits",
    "distributed_imaml",  # one process here; tests/test_distributed.py runs it under torchrun
]

# Files each example must write to its --out folder.
OUTPUTS: dict[str, list[str]] = {
    "noisy_labels": ["noisy_labels.png"],
    "ridge_hyperparameters": ["ridge_hyperparameters.png"],
    "logistic_weight_decay": ["logistic_weight_decay.png"],
    "dataset_distillation": ["dataset_distillation.png"],
    "imaml_digits": ["imaml_digits.png"],
    "imaml_sinusoid": ["imaml_sinusoid.png"],
    "deq_digits": ["deq_digits.png"],
    "distributed_imaml": ["distributed_imaml.png"],
}

TIMEOUT_S = 300  # --quick runs take seconds; this only stops a hang


def test_parse_result_accepts_and_refuses() -> None:
    good = (
        'RESULT: {"metric": "test_accuracy", "method": 0.92, "baseline": 0.9, '
        '"higher_is_better": true, "seeds": 5}'
    )
    assert parse_result(good)["seeds"] == 5
    bad = [
        good.replace("RESULT: ", "RESULT "),  # prefix
        good.replace('"seeds": 5', '"seeds": 5.0'),  # type
        good.replace("0.92", "NaN"),  # not finite (json.loads accepts NaN)
        good.replace('"higher_is_better": true', '"higher_is_better": 1'),
        good.replace(', "seeds": 5', ""),  # a key missing
    ]
    for line in bad:
        with pytest.raises((AssertionError, json.JSONDecodeError)):
            parse_result(line)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_quick(name: str, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    script = EXAMPLES_DIR / f"{name}.py"
    assert script.is_file(), f"{script} is listed in EXAMPLES but does not exist"
    lines, report = run_example(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        cwd=EXAMPLES_DIR.parent,
        timeout_s=TIMEOUT_S,
    )
    assert sum(line.startswith("RESULT:") for line in lines) == 1, report
    for output in OUTPUTS.get(name, []):
        path = tmp_path / output
        assert path.is_file(), f"{name} did not write {output}"
        assert path.stat().st_size > 0, f"{name} wrote an empty {output}"
