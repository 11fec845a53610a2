"""``fi.nn``: the stateful shell keeps precise types for what it returns."""

from collections.abc import Iterator
from typing import assert_type

import torch
from torch import nn

import funcimplicit as fi


class Ridge(fi.nn.ImplicitMetaGradientModule, solve=fi.CG()):
    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.zeros(3))

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((X @ self.w - y) ** 2).sum() + self.lam * (self.w**2).sum()

    def solve(self, X: torch.Tensor, y: torch.Tensor) -> None:
        return None


module = Ridge(torch.tensor(1.0, requires_grad=True))
assert_type(module.meta_parameters(), Iterator[torch.Tensor])
assert_type(module.named_meta_parameters(), Iterator[tuple[str, torch.Tensor]])
assert_type(module.meta_modules(), Iterator[nn.Module])
assert_type(module.functional(), fi.nn.Functional)
