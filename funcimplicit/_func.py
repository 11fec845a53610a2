"""Typed wrappers over the ``torch.func`` calls the library makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["jvp", "vjp"]


def vjp(fn: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
    """``fn(*primals)`` and its pullback ``cotangent -> (grad_primal, ...)``."""
    out = torch.func.vjp(fn, *primals)
    return out[0], out[1]


def jvp(
    fn: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any, Any]:
    """``fn(*primals)`` and its directional derivative along ``tangents``."""
    out = torch.func.jvp(fn, primals, tangents)
    return out[0], out[1]
