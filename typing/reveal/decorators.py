"""``implicit_root`` and ``fixed_point`` keep the decorated solver's signature (ParamSpec)."""

from collections.abc import Callable
from typing import Any, Protocol, assert_type

import torch

import funcimplicit as fi


def optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x - a


def contraction(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + a


@fi.implicit_root(optimality, solve=fi.CG())
def solver(init: torch.Tensor, a: torch.Tensor, *, steps: int = 3) -> torch.Tensor:
    return a.clone()


@fi.implicit_root(optimality, argnums=1, has_aux=True)
def solver_with_aux(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    return a.clone(), {"iterations": 0}


@fi.implicit_root(optimality, (1,), True)  # has_aux given by position
def positional_aux(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, str]:
    return a.clone(), "done"


@fi.fixed_point(contraction, has_aux=False, solve=fi.Neumann())
def iterate(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return init


@fi.fixed_point(contraction, has_aux=True)
def iterate_with_aux(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, int]:
    return init, 0


@fi.implicit_root(lambda x, p: {"w": x["w"] - p})
def dict_solver(init: dict[str, torch.Tensor], p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"w": p.clone()}


def make(flag: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    # A has_aux known only at run time: the result type is then unknown (Any).
    return fi.implicit_root(optimality, has_aux=flag)


class SolverSignature(Protocol):
    def __call__(
        self, init: torch.Tensor, a: torch.Tensor, *, steps: int = ...
    ) -> torch.Tensor: ...


a = torch.ones(2)
# assert_type cannot spell a def's parameter names; the checker shows the decorated solver
# as "def solver(init: Tensor, a: Tensor, *, steps: int = ...) -> Tensor". Assignment to the
# protocol checks that signature; fail/decorators.py checks that wrong calls are refused.
signature: SolverSignature = solver
plain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = iterate
assert_type(solver(a, a), torch.Tensor)
assert_type(solver(a, a, steps=5), torch.Tensor)
assert_type(solver_with_aux(a, a), tuple[torch.Tensor, dict[str, int]])
assert_type(positional_aux(a, a), tuple[torch.Tensor, str])
assert_type(iterate(a, a), torch.Tensor)
assert_type(iterate_with_aux(a, a), tuple[torch.Tensor, int])
assert_type(dict_solver({"w": a}, a), dict[str, torch.Tensor])
