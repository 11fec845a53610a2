"""Where an ``ImplicitMetaGradientModule``'s meta-parameters live: the registries, the
containers of tensors given to the constructor, and the checks on what a subclass defines.
(How its methods become pure functions is :mod:`.functional`.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import optree
import torch
from torch import nn

from .._core import tree as _tree
from .._core.compat import is_transformed

__all__ = [
    "MetaInputs",
    "MetaParameters",
    "TreeNode",
    "check_method_kind",
    "collect_inputs",
    "detached",
    "holds_meta_tensor",
    "put",
]


def put(registry: dict[str, Any], key: str, value: Any) -> None:
    """Store in a module's ``_parameters``, which may hold plain tensors (functional_call does)."""
    registry[key] = value


detached = _tree.detached


def _is_meta_tensor(value: Any) -> bool:
    # A tensor the caller may differentiate: it requires grad, or a torch.func transform
    # (grad, vmap, jvp) traces it.
    return isinstance(value, torch.Tensor) and (value.requires_grad or is_transformed(value))


@dataclass
class MetaInputs:
    """The tensors and modules a constructor received, by identity (held only during
    ``__init__``)."""

    tensors: dict[int, torch.Tensor] = field(default_factory=dict)
    modules: dict[int, nn.Module] = field(default_factory=dict)

    def has_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self.tensors

    def has_module(self, value: Any) -> bool:
        return isinstance(value, nn.Module) and id(value) in self.modules


def collect_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> MetaInputs:
    """Meta-parameters (tensors that require grad, or are traced by a transform) and
    meta-modules (any ``nn.Module``, in any mode) among the constructor's arguments,
    looking inside tuples, lists and dicts. A meta-module's submodules and parameters count too.
    """
    found = MetaInputs()
    leaves: list[Any] = optree.tree_leaves((args, kwargs), namespace="")  # type: ignore[arg-type]
    for leaf in leaves:
        if _is_meta_tensor(leaf):
            found.tensors[id(leaf)] = leaf
        elif isinstance(leaf, nn.Module):
            for module in leaf.modules():
                found.modules[id(module)] = module
            for p in leaf.parameters():
                found.tensors[id(p)] = p
    return found


class MetaParameters(nn.Module):
    """Holds a module's meta-parameters apart from its inner parameters.

    ``_parameters`` holds the meta tensors as given (identity kept: a plain tensor that
    requires grad is not converted to ``nn.Parameter``); ``_modules`` holds meta-modules and
    :class:`TreeNode` containers. ``named_parameters()`` therefore lists every meta-parameter.
    """


class TreeNode(nn.Module):
    """A pytree (dict, list, tuple, namedtuple) of meta-parameters, as nested modules.

    A leaf at path ``('lam',)`` is the parameter ``lam``, one at ``(0, 'a')`` is ``0.a``:
    the names nested ``ParameterDict``/``ParameterList`` would give. Non-tensor leaves are kept
    as constants; :meth:`rebuild` returns the tree with the current tensors.
    """

    def __init__(self, spec: Any, slots: list[tuple[tuple[str, ...], Any]]) -> None:
        super().__init__()
        self.spec = spec
        self.slots = slots  # per leaf: (path, None) for a tensor, ((), constant) otherwise

    def rebuild(self) -> Any:
        leaves = []
        for path, constant in self.slots:
            if not path:
                leaves.append(constant)
                continue
            node: nn.Module = self
            for key in path[:-1]:
                node = node._modules[key]  # type: ignore[assignment]
            leaves.append(node._parameters[path[-1]])
        return optree.tree_unflatten(self.spec, leaves)


def tree_node(value: Any, call: str) -> TreeNode:
    """Store the tensor leaves of a container under names built from their paths."""
    paths, leaves, spec = optree.tree_flatten_with_path(value, namespace="")
    slots: list[tuple[tuple[str, ...], Any]] = []
    root = TreeNode(spec, slots)
    seen: set[tuple[str, ...]] = set()
    for path, leaf in zip(paths, leaves, strict=True):
        if isinstance(leaf, nn.Module):
            raise TypeError(
                f"{call}: a container of modules cannot hold meta-modules; assign each "
                "meta-module to its own attribute (self.name = module) or pass an "
                "nn.ModuleList/nn.ModuleDict to the constructor."
            )
        if not (isinstance(leaf, torch.Tensor) and leaf.dtype.is_floating_point):
            slots.append(((), leaf))
            continue
        keys = tuple(str(k) for k in path)
        if any(not k or "." in k for k in keys) or keys in seen:
            raise TypeError(
                f"{call}: cannot name the meta-parameter at path {path!r}: keys must be "
                "distinct non-empty strings without '.' (or integers). Rename the keys, or "
                "call self.register_meta_parameter(name, tensor) for each tensor."
            )
        seen.add(keys)
        node: nn.Module = root
        for key in keys[:-1]:
            child = node._modules.get(key)
            if child is None:
                child = node._modules[key] = MetaParameters()
            node = child
        put(node._parameters, keys[-1], leaf)
        slots.append((keys, None))
    return root


def check_method_kind(cls: type, name: str) -> None:
    """Refuse ``objective``/``optimality``/``solve`` defined as anything but a plain method."""
    if name not in cls.__dict__:
        return
    attr = cls.__dict__[name]
    if isinstance(attr, staticmethod | classmethod):
        raise TypeError(
            f"{cls.__name__}.{name} must be a plain method, def {name}(self, *data); "
            f"it is a {type(attr).__name__}."
        )
    if not inspect.isfunction(attr):
        raise TypeError(
            f"{cls.__name__}.{name} must be a method, def {name}(self, *data); "
            f"received {type(attr).__name__}."
        )


def holds_meta_tensor(value: Any, inputs: MetaInputs) -> bool:
    """Whether ``value`` is a container (dict, list, tuple) holding a meta-input tensor."""
    if isinstance(value, torch.Tensor | nn.Module) or not isinstance(value, dict | list | tuple):
        return False
    leaves: list[Any] = optree.tree_leaves(value, namespace="")  # type: ignore[arg-type]
    return any(inputs.has_tensor(leaf) for leaf in leaves)
