"""Misused decorators, and wrong calls of decorated solvers (ParamSpec keeps the signature)."""

import torch

import funcimplicit as fi


def optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x - a


@fi.implicit_root(optimality)
def solver(init: torch.Tensor, a: torch.Tensor, *, steps: int = 3) -> torch.Tensor:
    return a.clone()


a = torch.ones(2)
solver(a, "a")  # type: ignore[arg-type]
solver(a)  # type: ignore[call-arg]
solver(a, a, steps="3")  # type: ignore[arg-type]
solver(a, a, tol=1e-3)  # type: ignore[call-arg]
solver(a, a).keys()  # type: ignore[attr-defined]


# has_aux=True, but the solver returns no (solution, aux) pair.
@fi.implicit_root(optimality, has_aux=True)  # type: ignore[arg-type]
def no_pair(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a


# has_aux=False (the default), but the solver returns a pair whose second item is no tensor tree.
@fi.implicit_root(optimality)  # type: ignore[type-var]
def forgot_has_aux(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, str]:
    return a, "aux"


@fi.fixed_point(optimality, has_aux=True)
def with_aux(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, int]:
    return a, 0


solution: torch.Tensor = with_aux(a, a)  # type: ignore[assignment]


@fi.implicit_root(optimality)  # type: ignore[type-var]
def returns_text(init: torch.Tensor, a: torch.Tensor) -> str:
    return "no tree"


fi.implicit_root("optimality")  # type: ignore[call-overload]
fi.implicit_root(optimality, solve="cg")  # type: ignore[call-overload]
fi.fixed_point(optimality, argnums=2.5)  # type: ignore[call-overload]
