"""Packing pytrees into the flat tensor list that ``autograd.Function.apply`` takes.

Every tensor a derivative rule needs must go through ``apply`` (a captured tensor is invisible
to ``torch.func`` and to autograd). Each distinct tensor goes in once: passing one tensor twice
through ``apply`` has known wrong-gradient bugs under compile. Non-tensor leaves of arguments
travel as constants beside the tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from optree import PyTreeSpec

from .._core import tree as _tree

__all__ = ["ArgsLayout", "TensorPool", "TreeLayout", "save_inputs_and_outputs"]


@dataclass(frozen=True)
class TreeLayout:
    """A tensor tree as indices into the packed tensors."""

    spec: PyTreeSpec
    index: tuple[int, ...]

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> Any:
        return _tree.unflatten(self.spec, [tensors[i] for i in self.index])


@dataclass(frozen=True)
class ArgsLayout:
    """A tuple of argument pytrees: tensor leaves as indices, other leaves as constants."""

    spec: PyTreeSpec
    slots: tuple[tuple[bool, Any], ...]

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[Any, ...]:
        leaves = [tensors[v] if is_tensor else v for is_tensor, v in self.slots]
        return tuple(_tree.unflatten(self.spec, leaves))

    def tensor_indices(self) -> list[int]:
        """Indices of the packed tensors that appear in the arguments, in order, once each."""
        seen: list[int] = []
        for is_tensor, v in self.slots:
            if is_tensor and v not in seen:
                seen.append(v)
        return seen

    def replaced(
        self, tensors: Sequence[torch.Tensor], chosen: Sequence[int], values: Sequence[Any]
    ) -> tuple[Any, ...]:
        """The arguments with the packed tensors at ``chosen`` replaced by ``values``."""
        local = list(tensors)
        for i, value in zip(chosen, values, strict=True):
            local[i] = value
        return self.rebuild(local)


class TensorPool:
    """Collects distinct tensors in order; identical objects share one slot."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self._positions: dict[int, int] = {}

    def add(self, tensor: torch.Tensor) -> int:
        key = id(tensor)
        if key not in self._positions:
            self._positions[key] = len(self.tensors)
            self.tensors.append(tensor)
        return self._positions[key]

    def add_tree(self, tree: Any) -> TreeLayout:
        leaves, spec = _tree.flatten(tree)
        return TreeLayout(spec, tuple(self.add(t) for t in leaves))

    def add_args(self, args: Sequence[Any]) -> ArgsLayout:
        leaves, spec = _tree.flatten(tuple(args))
        slots = tuple(
            (True, self.add(v)) if isinstance(v, torch.Tensor) else (False, v) for v in leaves
        )
        return ArgsLayout(spec, slots)


def save_inputs_and_outputs(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    """``setup_context`` shared by the rules: the non-tensor problem goes on ``ctx``; the
    packed tensors and the outputs are saved for both backward and jvp."""
    problem, *tensors = inputs
    ctx.problem = problem
    ctx.count = len(tensors)
    ctx.save_for_backward(*tensors, *output)
    ctx.save_for_forward(*tensors, *output)
