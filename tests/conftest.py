"""Test configuration: ``problems`` is importable; hypothesis runs small and reproducibly;
``--device`` chooses the torch device the suite runs on.

``python -m pytest --device cuda`` makes CUDA torch's default device for the session, so every
tensor a test creates without naming a device (and every ``torch.Generator(device=
torch.get_default_device())`` of the problem factories) lives there. Modules that test the CPU
by nature are skipped on another device (:data:`CPU_ONLY`). ``--device cpu``, the default,
changes nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

# Small and deterministic by default (fast, and a failure reproduces on every run);
# HYPOTHESIS_PROFILE=explore draws many fresh examples.
settings.register_profile(
    "default",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# Modules that test the CPU by nature, with why: skipped under --device other than cpu.
CPU_ONLY = {
    "test_host_reads.py": "counts host reads of CPU tensors",
    "test_docs.py": "runs the documentation's code as written (CPU)",
    "test_nn_docs.py": "runs the documentation's code as written (CPU)",
    "test_readme.py": "runs the README's code as written (CPU)",
    "test_examples.py": "runs the examples as scripts (CPU)",
    "test_typing.py": "mypy over typing/, no tensors",
    "test_benchmarks.py": "smoke runs of the CPU benchmark scripts",
    "test_distributed.py": "gloo processes on CPU",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device to run the tests on (default: cpu), e.g. --device cuda",
    )


def pytest_configure(config: pytest.Config) -> None:
    device = config.getoption("--device")
    if device != "cpu":
        torch.set_default_device(device)
    config.addinivalue_line(
        "markers", "typing: mypy over typing/ (about 15 s); deselect with -m 'not typing'"
    )
    config.addinivalue_line(
        "markers",
        "inductor: compiles with torch.compile's default backend (tens of seconds); "
        "deselect with -m 'not inductor'",
    )
    config.addinivalue_line(
        "markers", "cpu_only(reason): tests the CPU by nature; skipped under --device != cpu"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = config.getoption("--device")
    for item in items:
        reason = CPU_ONLY.get(item.path.name)
        marker = item.get_closest_marker("cpu_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "CPU-specific"
        if reason is not None and device != "cpu":
            item.add_marker(pytest.mark.skip(reason=f"CPU only ({reason}); --device {device}"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny problems: as fast, and on a shared machine a
    second thread waiting for a busy core slowed small matmuls by orders of magnitude."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
