"""``fi.nn.ImplicitMetaGradientModule`` refuses what it cannot differentiate, and says the fix."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import funcimplicit as fi

D = torch.float64


def meta() -> torch.Tensor:
    return torch.tensor(1.0, dtype=D, requires_grad=True)


class Good(fi.nn.ImplicitMetaGradientModule):
    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.zeros(2, dtype=D))

    def objective(self, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((self.w - y) ** 2).sum() + 0.5 * self.lam * (self.w**2).sum()

    def solve(self, y: torch.Tensor) -> None:
        with torch.no_grad():
            self.w.copy_(y / (1 + self.lam))


# ------------------------------------------------------------------- class definition


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
@pytest.mark.parametrize("name", ["objective", "optimality", "solve"])
def test_methods_must_be_plain_methods(kind: Any, name: str) -> None:
    with pytest.raises(TypeError, match=rf"Bad\.{name} must be a plain method.*{kind.__name__}"):
        type("Bad", (fi.nn.ImplicitMetaGradientModule,), {name: kind(lambda *a: None)})


def test_method_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bad\.objective must be a method.*received int"):

        class Bad(fi.nn.ImplicitMetaGradientModule):
            objective = 3  # type: ignore[assignment]


def test_class_keyword_must_be_a_linear_solver() -> None:
    with pytest.raises(TypeError, match=r"class Bad\(\.\.\., solve=\.\.\.\).*received Newton"):

        class Bad(Good, solve=fi.Newton()):
            pass


def test_instance_linear_solver_must_be_a_linear_solver() -> None:
    model = Good(meta())
    with pytest.raises(TypeError, match=r"Good\.linear_solver.*received str"):
        model.linear_solver = "cg"  # type: ignore[assignment]
    model.linear_solver = fi.GMRES()  # accepted
    model.linear_solver = None  # back to the class default


def test_neither_objective_nor_optimality() -> None:
    class NoRule(fi.nn.ImplicitMetaGradientModule):
        def solve(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"NoRule defines neither objective.*nor optimality"):
        NoRule()


def test_missing_solve() -> None:
    class NoSolve(fi.nn.ImplicitMetaGradientModule):
        def objective(self) -> torch.Tensor:
            return torch.zeros(())

    with pytest.raises(TypeError, match=r"NoSolve does not define solve\(self, \*data\)"):
        NoSolve()


def test_abstract_intermediate_classes_are_allowed() -> None:
    class Base(fi.nn.ImplicitMetaGradientModule):  # defines solve only: fine until instantiated
        def solve(self, y: torch.Tensor) -> None:
            pass

    class Concrete(Base):
        def __init__(self, lam: torch.Tensor) -> None:
            super().__init__()
            self.lam, self.w = lam, nn.Parameter(torch.zeros(()))

        def objective(self, y: torch.Tensor) -> torch.Tensor:
            return self.lam * (self.w - y) ** 2

    Concrete(meta())


# --------------------------------------------------------------------- construction


def test_no_inner_parameters() -> None:
    class Empty(Good):
        def __init__(self, lam: torch.Tensor) -> None:
            fi.nn.ImplicitMetaGradientModule.__init__(self)
            self.lam = lam

    with pytest.raises(ValueError, match=r"Empty\(\.\.\.\) created no inner parameters"):
        Empty(meta())


def test_no_meta_parameters() -> None:
    with pytest.raises(ValueError, match=r"Good\(\.\.\.\) has no meta-parameters.*require grad"):
        Good(torch.tensor(1.0, dtype=D))  # does not require grad: a constant, not meta


def test_forgetting_super_init() -> None:
    class Forgot(Good):
        def __init__(self, lam: torch.Tensor) -> None:
            pass

    with pytest.raises(TypeError, match=r"super\(\).__init__\(\) first"):
        Forgot(meta())


def test_super_init_takes_no_arguments() -> None:
    class Passes(Good):
        def __init__(self, lam: torch.Tensor) -> None:
            super(Good, self).__init__(lam)  # type: ignore[call-arg]

    with pytest.raises(TypeError):
        Passes(meta())


def test_inner_module_containing_a_meta_module_is_refused() -> None:
    class Wraps(Good):
        def __init__(self, body: nn.Module) -> None:
            super().__init__(meta())
            self.seq = nn.Sequential(body, nn.Tanh())

    with pytest.raises(TypeError, match=r"contains a meta-module.*its own attribute"):
        Wraps(nn.Linear(2, 2))


def test_container_of_meta_modules_is_refused() -> None:
    class Listed(Good):
        def __init__(self, lam: torch.Tensor, bodies: list[nn.Module]) -> None:
            super().__init__(lam)
            self.bodies = [lam, *bodies]

    with pytest.raises(TypeError, match="container of modules cannot hold meta-modules"):
        Listed(meta(), [nn.Linear(2, 2)])


def test_unnameable_pytree_keys_are_refused() -> None:
    class Dotted(Good):
        def __init__(self, hyper: dict[str, torch.Tensor]) -> None:
            super().__init__(meta())
            self.hyper = hyper

    with pytest.raises(TypeError, match=r"keys must be distinct non-empty strings without '.'"):
        Dotted({"a.b": meta()})


def test_non_leaf_tensor_as_inner_parameter_is_refused() -> None:
    class Derived(Good):
        def __init__(self, lam: torch.Tensor) -> None:
            super().__init__(lam)
            self.v = lam * torch.ones(2, dtype=D)

    with pytest.raises(TypeError, match=r"self\.v = \.\.\..*not a leaf.*nn\.Parameter"):
        Derived(meta())


def test_tensor_requiring_grad_created_in_init_is_an_inner_parameter() -> None:
    class Plain(Good):
        def __init__(self, lam: torch.Tensor) -> None:
            super().__init__(lam)
            self.v = torch.zeros(2, dtype=D, requires_grad=True)

    assert [n for n, _ in Plain(meta()).named_parameters()] == ["w", "v"]


def test_register_meta_parameter_checks() -> None:
    model = Good(meta())
    with pytest.raises(TypeError, match=r"expected a floating-point tensor; received torch.int64"):
        model.register_meta_parameter("k", torch.tensor(1))
    with pytest.raises(KeyError, match=r"non-empty string without '.'"):
        model.register_meta_parameter("a.b", meta())
    with pytest.raises(TypeError, match=r"expected an nn.Module; received Tensor"):
        model.register_meta_module("m", meta())  # type: ignore[arg-type]
    model.register_meta_parameter("extra", meta())
    assert [n for n, _ in model.named_meta_parameters()] == ["lam", "extra"]
    del model.extra
    assert [n for n, _ in model.named_meta_parameters()] == ["lam"]


# -------------------------------------------------------------------------- solving


def test_objective_must_return_a_scalar() -> None:
    class Vector(Good):
        def objective(self, y: torch.Tensor) -> torch.Tensor:
            return (self.w - y) ** 2

    model = Vector(meta())
    # The optimality is evaluated at the solution as soon as it is attached.
    with pytest.raises(ValueError, match=r"Vector\.objective\(\*data\): expected a scalar.*\(2,\)"):
        model.solve(torch.ones(2, dtype=D))


def test_optimality_must_match_the_inner_parameters() -> None:
    class TwoOut(Good):
        def optimality(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (self.w - y, self.w)

    model = TwoOut(meta())
    with pytest.raises(ValueError, match=r"one tensor per inner parameter.*\['w'\].*2 items"):
        model.solve(torch.ones(2, dtype=D))


def test_solve_errors_name_the_class_and_the_call() -> None:
    model = Good(meta())
    del model.lam
    with pytest.raises(ValueError, match=r"Good\.solve\(\*data\): the module has no meta"):
        model.solve(torch.ones(2, dtype=D))


def test_per_instance_and_per_class_linear_solvers_are_used() -> None:
    y = torch.tensor([1.0, 3.0], dtype=D)
    c = torch.tensor([1.0, 3.0], dtype=D)  # a Hessian diag(c) + lam with distinct eigenvalues

    class Strict(Good, solve=fi.CG(maxiter=1, on_failure="raise")):
        def objective(self, y: torch.Tensor) -> torch.Tensor:
            return 0.5 * (c * (self.w - y) ** 2).sum() + 0.5 * self.lam * (self.w**2).sum()

        def solve(self, y: torch.Tensor) -> None:
            with torch.no_grad():
                self.w.copy_(c * y / (c + self.lam))

    lam = meta()
    model = Strict(lam)
    model.solve(y)
    with pytest.raises(fi.ConvergenceError):
        model.w.sum().backward()  # type: ignore[no-untyped-call]
    model.linear_solver = fi.CG()  # the instance overrides its class
    model.solve(y)
    model.w.sum().backward()  # type: ignore[no-untyped-call]
    assert lam.grad is not None
