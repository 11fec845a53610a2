"""Attribute routing of ``ImplicitMetaGradientModule``: inner parameter or meta-parameter.

While ``__init__`` runs, a value assigned to an attribute is sorted by where it came from: a
tensor that requires grad or a module passed to the constructor (or a pytree holding such
tensors) is registered as a meta-parameter / meta-module in the module's ``_meta`` registry;
what the constructor creates is an inner parameter or submodule (``nn.Module``'s own
registries). The class's ``__getattr__`` / ``__setattr__`` / ``__delattr__`` delegate here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._linear.adapter import as_linear_solver
from . import state

__all__ = ["MISSING", "check_name", "delete_meta", "forget", "get_meta", "set_attribute"]

#: What :func:`get_meta` returns for a name that is not a meta-parameter or meta-module.
MISSING: Any = object()


def get_meta(module: nn.Module, name: str) -> Any:
    """The meta-parameter or meta-module ``name`` (a registered pytree rebuilt), or MISSING."""
    meta = module.__dict__.get("_meta")
    if meta is not None:
        if name in meta._parameters:
            return meta._parameters[name]
        if name in meta._modules:
            node = meta._modules[name]
            return node.rebuild() if isinstance(node, state.TreeNode) else node
    return MISSING


def set_attribute(
    module: nn.Module, name: str, value: Any, set_plain: Callable[[str, Any], None]
) -> None:
    """``module.name = value``: register a meta-input as such, otherwise ``set_plain``."""
    if name == "linear_solver":
        if value is not None:
            value = as_linear_solver(value, f"{type(module).__name__}.linear_solver = ...")
        object.__setattr__(module, name, value)
        return
    meta: state.MetaParameters | None = module.__dict__.get("_meta")
    inputs: state.MetaInputs | None = module.__dict__.get("_fi_inputs")
    call = f"{type(module).__name__}: self.{name} = ..."
    if meta is not None and inputs is not None:
        if inputs.has_tensor(value):
            forget(module, name)
            state.put(meta._parameters, name, value)
            return
        if inputs.has_module(value):
            forget(module, name)
            meta._modules[name] = value
            return
        if state.holds_meta_tensor(value, inputs):
            node = state.tree_node(value, call)
            forget(module, name)
            meta._modules[name] = node
            return
    if meta is not None and name in meta._parameters and isinstance(value, torch.Tensor):
        state.put(meta._parameters, name, value)  # re-assigning a meta-parameter
        return
    if meta is not None and (name in meta._parameters or name in meta._modules):
        forget(module, name)
    if isinstance(value, nn.Module):
        _refuse_meta_inside(module, value, call)
    elif (
        isinstance(value, torch.Tensor)
        and not isinstance(value, nn.Parameter)
        and value.requires_grad
        and name not in module.__dict__.get("_buffers", {})
    ):
        # TorchOpt's rule: a tensor that requires grad, created here, is an inner parameter.
        if not value.is_leaf:
            raise TypeError(
                f"{call}: this tensor requires grad but depends on other tensors (it is "
                "not a leaf), so it cannot be an inner parameter. Use "
                "nn.Parameter(value.detach().clone()) to start from its value."
            )
        value = nn.Parameter(value)
    set_plain(name, value)


def delete_meta(module: nn.Module, name: str) -> bool:
    """Remove the meta-parameter or meta-module ``name``; whether there was one."""
    meta = module.__dict__.get("_meta")
    if meta is not None and (name in meta._parameters or name in meta._modules):
        meta._parameters.pop(name, None)
        meta._modules.pop(name, None)
        return True
    return False


def forget(module: nn.Module, name: str) -> None:
    """Remove ``name`` from every registry, before it is registered again."""
    for registry in ("_parameters", "_buffers", "_modules"):
        module.__dict__.get(registry, {}).pop(name, None)
    module.__dict__.pop(name, None)
    meta = module.__dict__.get("_meta")
    if meta is not None:
        meta._parameters.pop(name, None)
        meta._modules.pop(name, None)


def check_name(module: nn.Module, name: str, call: str) -> None:
    """Refuse a name that cannot be an attribute, or a module whose ``__init__`` is not done."""
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"{call}: a name must be a non-empty string without '.'.")
    if "_meta" not in module.__dict__:
        raise TypeError(f"{call}: call super().__init__() first.")


def _refuse_meta_inside(owner: nn.Module, module: nn.Module, call: str) -> None:
    """An inner submodule must not contain meta-modules or meta-parameters: its
    parameters would be listed (and fitted) as inner parameters."""
    inputs: state.MetaInputs | None = owner.__dict__.get("_fi_inputs")
    meta = owner.__dict__.get("_meta")
    known = {id(t) for t in meta.parameters()} if meta is not None else set()
    if inputs is not None:
        known |= set(inputs.tensors) | set(inputs.modules)
    if not known:
        return
    if inputs is not None and any(id(m) in inputs.modules for m in module.modules()):
        found = "a meta-module"
    elif any(id(p) in known for p in module.parameters()):
        found = "a meta-parameter"
    else:
        return
    raise TypeError(
        f"{call}: this new module contains {found} passed to the constructor, so its "
        "parameters would be fitted as inner parameters. Assign each meta-module to its "
        "own attribute, or copy it (copy.deepcopy) to start the inner parameters from it."
    )
