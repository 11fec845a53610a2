"""What a subclass of ``ImplicitMetaGradientModule`` must provide, checked when it is built.

The metaclass sees the constructor's arguments (so assignments in ``__init__`` can tell
meta-inputs from what the module creates, see ``attributes.py``), checks that the class defines
an ``objective`` or an ``optimality`` and a ``solve``, and that the finished instance has inner
parameters and meta-parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from . import state

__all__ = ["ImplicitModuleType", "defines", "placeholder"]

F = TypeVar("F", bound=Callable[..., Any])


def placeholder(method: F) -> F:
    """Mark a method of the base class that a subclass is meant to define."""
    method.__dict__["_fi_placeholder"] = True
    return method


def defines(cls: type, name: str) -> bool:
    """Whether ``cls`` overrides the base class's placeholder for method ``name``."""
    return "_fi_placeholder" not in getattr(inspect.getattr_static(cls, name), "__dict__", {})


class ImplicitModuleType(type):
    """Sees the constructor's arguments, so assignments in ``__init__`` can tell meta-inputs
    from what the module creates; then checks that the instance is complete."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        _check_class(cls)
        new: Any = cls.__new__
        plain = new is object.__new__  # object.__new__ refuses the constructor's arguments
        self: Any = new(cls) if plain else new(cls, *args, **kwargs)
        self.__dict__["_meta"] = state.MetaParameters()
        self.__dict__["_fi_inputs"] = state.collect_inputs(args, kwargs)
        try:
            self.__init__(*args, **kwargs)
        finally:
            del self.__dict__["_fi_inputs"]
        _check_instance(self)
        return self


def _check_class(cls: type) -> None:
    name = cls.__name__
    if not (defines(cls, "objective") or defines(cls, "optimality")):
        raise TypeError(
            f"{name} defines neither objective(self, *data) (a scalar loss of the inner "
            "parameters) nor optimality(self, *data) (zero at the inner solution); define one."
        )
    if not defines(cls, "solve"):
        raise TypeError(
            f"{name} does not define solve(self, *data), the inner loop that fits the inner "
            "parameters (any optimizer, or fi.minimize on self.functional())."
        )


def _check_instance(self: Any) -> None:
    name = type(self).__name__
    if "_parameters" not in self.__dict__:
        raise TypeError(f"{name}.__init__ must call super().__init__() first.")
    if not any(True for _ in self.parameters()):
        raise ValueError(
            f"{name}(...) created no inner parameters. Create them in __init__, e.g. "
            "self.w = nn.Parameter(torch.zeros(n)) or a submodule such as nn.Linear(...)."
        )
    if not any(True for _ in self.meta_parameters()):
        raise ValueError(
            f"{name}(...) has no meta-parameters. Pass tensors that require grad (or "
            "nn.Modules) to the constructor and assign them to attributes, or call "
            "self.register_meta_parameter(name, tensor)."
        )
