"""``fi.TensorTree`` is a precise type (not ``Any``), and trees keep their structure."""

from collections import OrderedDict
from typing import NamedTuple, TypeVar, assert_type

import torch

import funcimplicit as fi


class Pair(NamedTuple):
    u: torch.Tensor
    w: torch.Tensor


t = torch.zeros(2)


TreeT = TypeVar("TreeT", bound=fi.TensorTree)


def identity(v: TreeT) -> TreeT:
    return v


def tree_param(tree: fi.TensorTree) -> None:
    # Narrowing works like on any union: a checker that read the alias as Any could not.
    if isinstance(tree, torch.Tensor):
        assert_type(tree, torch.Tensor)


# The structure passed in is the structure handed back, whatever the nesting.
assert_type(fi.linear_solve(identity, t), torch.Tensor)
assert_type(fi.linear_solve(identity, (t, t)), tuple[torch.Tensor, torch.Tensor])
assert_type(fi.linear_solve(identity, [t, t]), list[torch.Tensor])
assert_type(fi.linear_solve(identity, {"a": t}), dict[str, torch.Tensor])
assert_type(fi.linear_solve(identity, Pair(t, t)), Pair)
ordered: OrderedDict[str, torch.Tensor] = OrderedDict(a=t)
assert_type(fi.linear_solve(identity, ordered), OrderedDict[str, torch.Tensor])
assert_type(
    fi.linear_solve(identity, {"a": (t, [t])}), dict[str, tuple[torch.Tensor, list[torch.Tensor]]]
)
parameters = list(torch.nn.Linear(2, 2).parameters())
assert_type(fi.linear_solve(identity, parameters), list[torch.nn.Parameter])
