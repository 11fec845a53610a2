"""Vector-space operations on pytrees of tensors, shared by every solver.

A pytree here is any optree structure (tuples, lists, dicts, namedtuples, and types
registered with optree) whose leaves are tensors. Krylov methods see such a tree as one long
vector: inner products and norms run over all leaves jointly. Nothing here reads a tensor's
value on the host, so every function is safe under ``torch.func`` transforms and ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import optree
import torch
from optree import PyTreeSpec

__all__ = [
    "TensorTree",
    "TreeSequence",
    "TreeT",
    "add",
    "axpy",
    "detached",
    "flatten",
    "map_leaves",
    "norm",
    "ravel",
    "scale",
    "size",
    "sub",
    "unflatten",
    "vdot",
    "where",
    "zeros_like",
]

_T_co = TypeVar("_T_co", covariant=True)


class TreeSequence(Protocol[_T_co]):
    """A tuple, list, namedtuple or deque, read-only: what a sequence node of a tree offers.

    Not ``collections.abc.Sequence``: ``str`` and ``bytes`` are sequences of themselves, so
    with ``Sequence`` a checker would take ``"abc"`` for a tensor tree. Their ``__contains__``
    only accepts a ``str`` (``bytes``), which this protocol's ``object`` parameter rules out.
    """

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> _T_co: ...
    def __iter__(self) -> Iterator[_T_co]: ...
    def __contains__(self, value: object, /) -> bool: ...


#: A tensor, or a (nested) tuple, list, namedtuple or mapping of them. A type checker reads it
#: precisely (not as ``Any``): a ``str``, a ``float`` or a ``list[float]`` is not a tree.
TensorTree: TypeAlias = torch.Tensor | TreeSequence["TensorTree"] | Mapping[Any, "TensorTree"]
#: "The same structure in as out": a type variable bound to :data:`TensorTree`.
TreeT = TypeVar("TreeT", bound=TensorTree)

# optree's default namespace: dict keys always sorted. (The "torch" namespace changes how
# dicts flatten once torch.utils._cxx_pytree is imported, which torch does lazily.)
_NAMESPACE = ""


def flatten(tree: Any) -> tuple[list[Any], PyTreeSpec]:
    """Leaves (in a fixed order) and structure of ``tree``; ``None`` is an empty node."""
    return optree.tree_flatten(tree, namespace=_NAMESPACE)


def unflatten(spec: PyTreeSpec, leaves: Sequence[Any]) -> Any:
    """Rebuild the tree of ``spec`` from its leaves."""
    return optree.tree_unflatten(spec, leaves)


def map_leaves(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise over trees of one structure (a bare tensor: a direct call)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree, *rest)
    return optree.tree_map(fn, tree, *rest, namespace=_NAMESPACE)


def detached(tree: Any) -> Any:
    """``tree`` with every tensor leaf detached (other leaves untouched)."""
    return map_leaves(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, tree)


def add(a: TreeT, b: TreeT) -> TreeT:
    """``a + b`` leafwise."""
    return map_leaves(torch.add, a, b)  # type: ignore[no-any-return]


def sub(a: TreeT, b: TreeT) -> TreeT:
    """``a - b`` leafwise."""
    return map_leaves(torch.sub, a, b)  # type: ignore[no-any-return]


def scale(alpha: torch.Tensor | float, a: TreeT) -> TreeT:
    """``alpha * a`` for a scalar (a 0-d tensor under ``vmap`` is one scalar per element)."""
    return map_leaves(lambda leaf: alpha * leaf, a)  # type: ignore[no-any-return]


def axpy(alpha: torch.Tensor | float, x: TreeT, y: TreeT) -> TreeT:
    """``alpha * x + y`` leafwise (one fused ``addcmul`` per leaf for a tensor ``alpha``)."""
    if isinstance(alpha, torch.Tensor):
        return map_leaves(lambda xi, yi: torch.addcmul(yi, alpha, xi), x, y)  # type: ignore[no-any-return]
    return map_leaves(lambda xi, yi: torch.add(yi, xi, alpha=alpha), x, y)  # type: ignore[no-any-return]


def zeros_like(a: TreeT) -> TreeT:
    """A tree of zeros shaped like ``a``."""
    return map_leaves(torch.zeros_like, a)  # type: ignore[no-any-return]


def where(cond: torch.Tensor, a: TreeT, b: TreeT) -> TreeT:
    """Leafwise ``a if cond else b`` for a 0-d boolean ``cond`` (one flag per vmap element).

    A leaf that is not a tensor (a Python object a loop carries, e.g. a linearization) is
    taken from ``a``.
    """

    def pick(ai: Any, bi: Any) -> Any:
        return torch.where(cond, ai, bi) if isinstance(ai, torch.Tensor) else ai

    return map_leaves(pick, a, b)  # type: ignore[no-any-return]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # sum(a * b), not torch.dot: under vmap, dot becomes a batched kernel that rounds
    # differently, and a stopping decision must not depend on whether it is batched.
    return torch.sum(a * b)


def vdot(a: TensorTree, b: TensorTree) -> torch.Tensor:
    """Inner product over all leaves jointly: ``sum_leaves sum(a_i * b_i)`` (a 0-d tensor)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return _dot(a, b)
    leaves_a, _ = flatten(a)
    leaves_b, _ = flatten(b)
    total = _dot(leaves_a[0], leaves_b[0])
    for ai, bi in zip(leaves_a[1:], leaves_b[1:], strict=True):
        total = total + _dot(ai, bi)
    return total


def norm(a: TensorTree) -> torch.Tensor:
    """Euclidean norm over all leaves jointly (a 0-d tensor).

    One tensor: one ``vector_norm`` kernel (three dispatched ops fewer than ``sqrt(sum(a *
    a))``, and the same bits under ``vmap`` as alone); a tree: the root of the summed squares.
    """
    if isinstance(a, torch.Tensor):
        out: torch.Tensor = torch.linalg.vector_norm(a)
        return out
    return torch.sqrt(vdot(a, a))


def size(a: TensorTree) -> int:
    """Total number of elements over all leaves (of one problem, not of a vmap batch)."""
    leaves, _ = flatten(a)
    return sum(leaf.numel() for leaf in leaves)


def ravel(tree: TreeT) -> tuple[torch.Tensor, Callable[[torch.Tensor], TreeT]]:
    """Concatenate all leaves into one vector; also return the inverse map."""
    leaves, spec = flatten(tree)
    shapes = [leaf.shape for leaf in leaves]
    sizes = [leaf.numel() for leaf in leaves]
    vector = torch.cat([leaf.reshape(-1) for leaf in leaves])

    def unravel(vec: torch.Tensor) -> TreeT:
        parts = torch.split(vec, sizes)
        return unflatten(spec, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)])  # type: ignore[no-any-return]

    return vector, unravel
