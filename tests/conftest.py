"""Test configuration: ``problems`` is importable; hypothesis runs small and reproducibly."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "typing: mypy over typing/ (about 15 s); deselect with -m 'not typing'"
    )
    config.addinivalue_line(
        "markers",
        "inductor: compiles with torch.compile's default backend (tens of seconds); "
        "deselect with -m 'not inductor'",
    )


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny problems: as fast, and on a shared machine a
    second thread waiting for a busy core slowed small matmuls by orders of magnitude."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
