"""Least squares as a wrapper: ``Normal(inner)`` runs any square solver on the normal equations.

``NormalCG`` is ``Normal`` with a CG inside, kept under the name users know.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import check_same_layout, floating_leaves
from .._core.result import LinearSolveResult
from .base import IterativeSolver, LinearSolverBase, non_finite_visible
from .cg import CG

__all__ = ["Normal", "NormalCG"]

# Fields of ``Normal`` itself that govern the normal equations; the inner solver keeps its
# defaults for them, so one setting never silently overrides another.
_GOVERNED = {"rtol": None, "atol": 0.0, "ridge": 0.0, "on_failure": "warn"}


@dataclass(frozen=True)
class Normal(LinearSolverBase):
    """Least squares ``min ||A x - b||^2 + ridge ||x||^2`` by any square solver ``inner``.

    ``inner`` (default ``CG()``) solves the normal equations ``(A^T A + ridge I) x = A^T b``:
    their operator ``v -> A^T (A v)`` is symmetric positive semidefinite (definite when
    ``A`` has full column rank or ``ridge > 0``), so a symmetric method (``CG``,
    ``Cholesky``) fits, and so does any other (``LU``, ``GMRES``, ``Auto()``). ``A^T`` comes
    from ``torch.func.vjp`` of ``matvec``, so ``A`` may be non-square: pass ``init`` to fix
    the shape of ``x``. Here ``ridge`` is Tikhonov regularization, added to ``A^T A``; for
    every other solver it is added to ``A``.

    ``rtol``, ``atol``, ``ridge`` and ``on_failure`` are ``Normal``'s: the tolerance applies
    to the normal residual ``A^T b - (A^T A + ridge I) x`` relative to ``||A^T b||``, with
    ``inner``'s default ``rtol`` when ``None``. Everything else (``maxiter``, a
    preconditioner of ``A^T A``, ``restart``) is the inner solver's. Squaring the condition
    number costs digits in low precision: prefer GMRES or LU for square non-symmetric
    systems.

    Attributes:
        inner: the linear solver run on the normal equations (a library solver or a
            :class:`funcimplicit.LinearSolverBase` subclass), with its own ``rtol``,
            ``atol``, ``ridge`` and ``on_failure`` left at their defaults.

    Raises:
        TypeError: ``inner`` is not a linear solver instance (a class, a callable, an inner
            method such as ``fi.LBFGS()``).
        ValueError: ``inner`` solves least squares itself (``NormalCG``, ``Normal``), or sets
            ``rtol``, ``atol``, ``ridge`` or ``on_failure``, which are ``Normal``'s.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> solver = fi.Normal(fi.Cholesky())
        >>> x = solver(lambda v: A @ v, b, init=torch.zeros(2, dtype=torch.float64))
        >>> torch.allclose(x, torch.linalg.lstsq(A, b[:, None]).solution[:, 0])
        True
    """

    inner: LinearSolverBase = field(default_factory=CG)

    least_squares: ClassVar[bool] = True
    needs_transpose: ClassVar[bool] = True  # A^T comes from a VJP of the operator

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_inner(self.inner)

    def _default_rtol(self, dtype: torch.dtype) -> float:
        return self.inner._default_rtol(dtype)

    @property
    def failure_hint(self) -> str:
        return (
            f"The normal equations (solved by {type(self.inner).__name__}) square the condition "
            "number of A: set ridge > 0 to regularize them, loosen rtol/atol, or raise the inner "
            "solver's maxiter."
        )

    def normal_solver(self) -> LinearSolverBase:
        """``inner`` with these tolerances and ridge, for ``(A^T A + ridge I) x = A^T b``."""
        return replace(
            self.inner,
            rtol=self.rtol,
            atol=self.atol,
            ridge=self.ridge,
            on_failure=self.on_failure,
        )

    def run(
        self, matvec: Callable[[Any], Any], b: Any, init: Any | None = None
    ) -> LinearSolveResult[Any]:
        """Solve the normal equations; ``init`` (shaped like ``x``) fixes a non-square shape."""
        call = f"{type(self).__name__}.run(matvec, b)"
        floating_leaves(b, call, "b")
        if init is None:
            x_like = _tree.zeros_like(b)
        else:
            floating_leaves(init, call, "init")
            x_like = _tree.zeros_like(init)
        try:
            ax, transpose = _func.vjp(matvec, x_like)
        except Exception as error:
            if init is None:
                raise ValueError(
                    f"{call}: could not apply matvec to a zero tree shaped like b ({error}). "
                    "For a non-square operator pass init with the shape of the solution x."
                ) from error
            raise
        check_same_layout(ax, b, call, "matvec(x)")

        # min ||A x - b||^2 + ridge ||x||^2  <=>  (A^T A + ridge I) x = A^T b: the inner
        # solver gets v -> A^T (A v) and folds the ridge in itself, as for any square system.
        def normal(v: Any) -> Any:
            return transpose(matvec(v))[0]

        rhs = transpose(b)[0]
        result = self.normal_solver().run(normal, rhs, init)
        return non_finite_visible(result, _tree.norm(b))


def _spelled(cls: type) -> str:
    """How a user spells the class: ``fi.CG`` for the library's own."""
    return f"fi.{cls.__name__}" if cls.__module__.startswith("funcimplicit.") else cls.__name__


def _check_inner(inner: object) -> None:
    """``inner`` must be a square linear solver with its governed fields at their defaults."""
    if isinstance(inner, type):
        raise TypeError(
            f"Normal(inner): inner must be a linear solver instance; received the class "
            f"{inner.__name__}. Pass an instance, e.g. fi.Normal({_spelled(inner)}())."
        )
    if not isinstance(inner, LinearSolverBase):
        raise TypeError(
            "Normal(inner): inner must be a linear solver (a fi.LinearSolverBase such as "
            f"fi.CG(), fi.Cholesky(), fi.LU() or fi.GMRES()); received {type(inner).__name__}. "
            "For your own method, subclass fi.LinearSolverBase and pass an instance."
        )
    if inner.least_squares:
        raise ValueError(
            f"Normal(inner): inner must solve a square system; received "
            f"{type(inner).__name__}, which already solves least squares (its normal equations "
            "would be squared again). Pass its square solver, e.g. fi.Normal(fi.CG())."
        )
    values = {f.name: getattr(inner, f.name) for f in fields(inner) if f.name in _GOVERNED}
    changed = {name: v for name, v in values.items() if v != _GOVERNED[name]}
    if changed:
        settings = ", ".join(f"{name}={v!r}" for name, v in changed.items())
        raise ValueError(
            f"Normal(inner): the tolerances, ridge and on_failure are Normal's own, applied to "
            f"the normal equations; received an inner {type(inner).__name__} with {settings}. "
            f"Set them on Normal instead: fi.Normal({_spelled(type(inner))}(), {settings})."
        )


@dataclass(frozen=True, kw_only=True)
class NormalCG(Normal, IterativeSolver):
    """``Normal(CG(...))``: CG on ``(A^T A + ridge I) x = A^T b`` (any ``A``, also non-square).

    The fields of :class:`IterativeSolver` (``maxiter``, ``preconditioner`` of ``A^T A``,
    ``check_every``) configure the CG inside; the rest is as for :class:`Normal`: ``A^T``
    comes from ``torch.func.vjp`` of ``matvec``, the tolerance applies to the normal residual
    ``A^T b - (A^T A + ridge I) x`` relative to ``||A^T b||``. Squaring the condition number
    costs digits in low precision: prefer GMRES or BiCGStab for square non-symmetric
    systems. For a non-square ``A`` pass ``init`` to fix the shape of ``x``.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> x = fi.NormalCG()(lambda v: A @ v, b, init=torch.zeros(2, dtype=torch.float64))
        >>> torch.allclose(x, torch.linalg.lstsq(A, b[:, None]).solution[:, 0])
        True
    """

    inner: LinearSolverBase = field(init=False, repr=False, compare=False)

    @property
    def failure_hint(self) -> str:
        return "Raise maxiter, loosen rtol/atol, add a preconditioner, or set ridge > 0."

    def __post_init__(self) -> None:
        # The fields are checked under this class's name; the CG built from them is valid.
        IterativeSolver.__post_init__(self)
        inner = CG(
            maxiter=self.maxiter,
            preconditioner=self.preconditioner,
            check_every=self.check_every,
        )
        object.__setattr__(self, "inner", inner)
