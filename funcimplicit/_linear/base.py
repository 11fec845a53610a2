"""The common shape of every linear solver: fields, validation, checks and reporting."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, TypeAlias

import torch

from .._core import tree as _tree
from .._core.checks import check_same_layout, floating_leaves
from .._core.loop import ALL_DONE, NONE_DONE, progress
from .._core.result import (
    ON_FAILURE_CHOICES,
    LinearSolveResult,
    OnFailure,
    Status,
    report,
)
from .._core.tree import TensorTree, TreeT

__all__ = [
    "LinearSolveArg",
    "LinearSolver",
    "IterativeSolver",
    "LinearSolverBase",
    "Operator",
    "default_maxiter",
    "default_rtol",
    "judged",
    "start_residual",
]

#: ``v -> A v`` on pytrees (ridge already folded in).
Operator = Callable[[Any], Any]

_DEFAULT_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def default_rtol(dtype: torch.dtype) -> float:
    """Iterative solvers' default relative tolerance: 1e-10 (float64), 1e-5 (float32), 1e-2 else."""
    return _DEFAULT_RTOL.get(dtype, 1e-2)


def default_maxiter(size: int) -> int:
    """Default iteration cap: ten per unknown, at least 100 (so a 0-d problem still iterates)."""
    return max(10 * size, 100)


def _check_number(owner: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{owner}: {name} must be a finite number; received {value!r}.")
    if value < 0:
        raise ValueError(f"{owner}: {name} must be >= 0; received {value!r}.")


@dataclass(frozen=True, kw_only=True)
class LinearSolverBase:
    """The base of every linear solver, the library's and a user's own.

    A solver solves ``(A + ridge I) x = b`` given only ``matvec: v -> A v`` on pytrees. Calling
    it returns ``x``; :meth:`run` also returns per-element statistics. A direct call is not
    implicitly differentiated: use :func:`funcimplicit.linear_solve` for derivatives.

    A subclass (a frozen ``dataclass(kw_only=True)``) implements :meth:`compute` and declares
    its capabilities as class attributes; the derivative rules ask these, never a solver's
    name:

    - ``requires_symmetric``: the method assumes a symmetric operator (CG, Cholesky).
    - ``least_squares``: the method solves ``min ||A x - b||`` through the normal equations,
      also for a non-square ``A`` (Normal, NormalCG); it then gives :meth:`normal_solver`, and
      ``ridge`` means Tikhonov ``(A^T A + ridge I)``; for every other solver ``(A + ridge I)``.
    - ``materializes``: the method builds the matrix of ``A``, one product per unknown
      (LU, Cholesky).
    - ``needs_transpose``: the method applies ``A^T`` through a VJP of ``matvec`` (Normal).
    - ``applies_operator_only``: the method only applies the operator to trees (never
      differentiates or ``vmap``-s it), so a cheaper operator without derivatives may be
      handed to it (the iterative solvers).
    """

    rtol: float | None = None
    atol: float = 0.0
    ridge: float = 0.0
    on_failure: OnFailure = "warn"

    requires_symmetric: ClassVar[bool] = False
    least_squares: ClassVar[bool] = False
    materializes: ClassVar[bool] = False
    needs_transpose: ClassVar[bool] = False
    applies_operator_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_number(owner, "rtol", self.rtol, allow_none=True)
        _check_number(owner, "atol", self.atol)
        _check_number(owner, "ridge", self.ridge)
        if self.on_failure not in ON_FAILURE_CHOICES:
            raise ValueError(
                f"{owner}: on_failure must be one of {ON_FAILURE_CHOICES}; "
                f"received {self.on_failure!r}."
            )

    def __call__(
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: TreeT | None = None
    ) -> TreeT:
        """Solve ``(A + ridge I) x = b``; warn or raise (``on_failure``) if not converged.

        Args:
            matvec: the linear map ``v -> A v`` on pytrees shaped like ``b``.
            b: the right-hand side, a pytree of real floating tensors.
            init: an initial guess shaped like ``b`` (zeros when omitted).

        Returns:
            ``x``, with the structure of ``b``.
        """
        result: LinearSolveResult[TreeT] = self.run(matvec, b, init)
        report(result, self.on_failure, f"{type(self).__name__}(matvec, b)", self.failure_hint)
        return result.solution

    def run(
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: TreeT | None = None
    ) -> LinearSolveResult[TreeT]:
        """Solve like :meth:`__call__` but never warn; return the solution with statistics."""
        call = f"{type(self).__name__}.run(matvec, b)"
        floating_leaves(b, call, "b")
        if init is not None:
            check_same_layout(init, b, call, "init")
            # The result may be the start itself (no iteration needed): never hand back the
            # caller's own tensor.
            init = _tree.map_leaves(torch.clone, init)
        operator = self._operator(matvec, b, call)
        rtol = self._default_rtol(_tree.flatten(b)[0][0].dtype) if self.rtol is None else self.rtol
        b_norm = _tree.norm(b)
        tolerance = torch.clamp(rtol * b_norm, min=self.atol)
        if _tree.size(b) == 0:  # no unknowns: x is empty and solves the system exactly
            zero = torch.zeros_like(b_norm, dtype=torch.int64)
            return LinearSolveResult(
                _tree.zeros_like(b),
                zero,
                b_norm,
                tolerance,
                torch.ones_like(zero, dtype=torch.bool),
            )
        return non_finite_visible(self.compute(operator, b, init, tolerance), b_norm)

    def _default_rtol(self, dtype: torch.dtype) -> float:
        return default_rtol(dtype)

    @property
    def failure_hint(self) -> str:
        """Advice appended to a non-convergence message."""
        return "Raise maxiter, loosen rtol/atol, add a preconditioner, or set ridge > 0."

    def _operator(self, matvec: Callable[[Any], Any], b: TensorTree, call: str) -> Operator:
        """``v -> A v + ridge v``, checking the first output against the layout of ``b``."""
        checked = False
        ridge = self.ridge

        def operator(v: Any) -> Any:
            nonlocal checked
            out = matvec(v)
            if not checked:
                check_same_layout(out, b, call, "matvec(x)")
                checked = True
            return _tree.axpy(ridge, v, out) if ridge else out

        return operator

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        """Solve ``operator(x) = b`` to ``tolerance``: what a subclass implements.

        Args:
            operator: ``v -> (A + ridge I) v`` on pytrees shaped like ``b`` (ridge folded in).
            b: the right-hand side, checked: real floating leaves, at least one element.
            init: a start shaped like ``b`` (a copy, free to modify), or ``None`` for zeros.
            tolerance: ``max(rtol * ||b||, atol)`` per element.

        Returns:
            A result judged by its true residual, e.g. with ``finish(...)``; the base then
            makes a non-finite element NaN.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement compute().")

    def normal_solver(self) -> LinearSolverBase:
        """For a ``least_squares`` solver: the square solver it runs on the normal equations."""
        raise NotImplementedError(f"{type(self).__name__} does not solve least squares.")


@dataclass(frozen=True, kw_only=True)
class IterativeSolver(LinearSolverBase):
    """Fields shared by iterative (Krylov and Neumann) solvers.

    Attributes:
        maxiter: iteration cap; ``None`` means ``max(10 * size, 100)`` for a problem of
            ``size`` unknowns. It is also the trip count under ``torch.compile``.
        preconditioner: ``v -> M v`` with ``M`` approximating ``(A + ridge I)^{-1}``.
        check_every: how often the loop reads on the host whether every (``vmap``) element
            has converged, to stop early: every iteration (``1``, the default), every
            ``k``-th, or never (``None``: exactly ``maxiter`` iterations, no host
            synchronization inside the loop, for GPUs; give it a small ``maxiter``).
            Converged elements are frozen either way, so results do not depend on it (but
            for rounding in GMRES, whose small problem ``check_every=1`` solves on the host
            for one plain tensor).
    """

    maxiter: int | None = None
    preconditioner: Callable[[Any], Any] | None = None
    check_every: int | None = 1

    applies_operator_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            raise ValueError(
                f"{owner}: maxiter must be a positive int or None; received {self.maxiter!r}."
            )
        if self.check_every is not None and (
            isinstance(self.check_every, bool)
            or not isinstance(self.check_every, int)
            or self.check_every < 1
        ):
            raise ValueError(
                f"{owner}: check_every must be a positive int or None; "
                f"received {self.check_every!r}."
            )
        if self.preconditioner is not None and not callable(self.preconditioner):
            raise TypeError(
                f"{owner}: preconditioner must be a callable v -> M v; "
                f"received {type(self.preconditioner).__name__}."
            )

    def _maxiter(self, b: TensorTree) -> int:
        return default_maxiter(_tree.size(b)) if self.maxiter is None else self.maxiter

    def _precondition(self, v: TreeT) -> TreeT:
        if self.preconditioner is None:
            return v
        try:
            out: TreeT = self.preconditioner(v)
        except RuntimeError as error:
            if "INTERNAL ASSERT" not in str(error):
                raise
            raise RuntimeError(
                f"{type(self).__name__}: the preconditioner failed inside torch.func "
                f"({str(error).splitlines()[0][:120]}). It closes over a tensor of a torch.func "
                "transform that is not active where this linear solve runs: the forward-mode "
                "rule of a derivative (torch.func.hessian = jacfwd(jacrev), jvp of a gradient). "
                "First derivatives, vmap(grad) and jacrev(jacrev) work with such a "
                "preconditioner: take Hessians with jacrev(jacrev), or build the "
                "preconditioner from tensors created outside the transforms."
            ) from error
        return out


def finish(
    solution: TreeT,
    iterations: torch.Tensor,
    residual_norm: torch.Tensor,
    tolerance: torch.Tensor,
    *,
    claimed: torch.Tensor | None = None,
    slack: torch.Tensor | float = 0.0,
    valid: torch.Tensor | None = None,
    failure: Callable[[], torch.Tensor] | None = None,
) -> LinearSolveResult[TreeT]:
    """Assemble a result from the true final residual ``||b - A x||``.

    Converged iff that residual is finite and either meets ``tolerance`` or, for methods
    that stop on a recurrence residual which met the tolerance (``claimed``), exceeds it by
    at most ``slack``: the rounding drift between recurrence and true residual. An operator
    that breaks the method's assumptions (CG on a non-symmetric matrix) fails it by far.
    Where ``valid`` is false (a failed factorization, a user solver's own verdict) the
    element is not converged either. ``failure()`` gives the :class:`Status` code of what
    the method detected per element; it is called only when some element did not converge.
    """
    finite = torch.isfinite(residual_norm)
    converged = finite & (residual_norm <= tolerance)
    if claimed is not None:
        converged = converged | (finite & claimed & (residual_norm <= tolerance + slack))
    if valid is not None:
        converged = converged & valid
    reason = None
    if failure is not None and progress(converged) != ALL_DONE:
        reason = failure()
    return LinearSolveResult(solution, iterations, residual_norm, tolerance, converged, reason)


def non_finite_visible(
    result: LinearSolveResult[TreeT], b_norm: torch.Tensor
) -> LinearSolveResult[TreeT]:
    """NaN solution wherever the right-hand side, an operator product or ``x`` is not finite.

    A Krylov method stops at once on a NaN residual and would hand back its start (zeros):
    a NaN right-hand side (or cotangent, in a backward pass) would become the answer 0 or a
    zero gradient. Whatever ``on_failure`` says (it governs non-convergence only), such an
    element's solution is NaN and it is not converged (status ``NONFINITE``). Per element (a
    ``where`` on the element's own flag, no host branching but one read to skip the
    ``where`` when nothing is bad), so one NaN ``vmap`` element never poisons the others.
    """
    bad = torch.logical_not(
        torch.isfinite(b_norm)
        & torch.isfinite(result.residual_norm)
        & torch.isfinite(_tree.norm(result.solution))
    )
    if progress(bad) == NONE_DONE:
        return result
    solution = _tree.map_leaves(lambda leaf: torch.where(bad, torch.nan, leaf), result.solution)
    before = int(Status.MAX_ITERATIONS) if result.reason is None else result.reason
    reason = torch.where(bad, int(Status.NONFINITE), before)
    return replace(result, value=solution, converged=result.converged & ~bad, reason=reason)


def rounding_slack(b: TensorTree) -> torch.Tensor:
    """``sqrt(eps) * ||b||``: how far a recurrence residual may drift from the true one."""
    dtype = _tree.flatten(b)[0][0].dtype
    return math.sqrt(torch.finfo(dtype).eps) * _tree.norm(b)


def start_residual(operator: Operator, b: TreeT, init: TreeT | None) -> tuple[TreeT, TreeT]:
    """Initial ``x`` and residual ``b - A x`` (no matvec when starting from zero)."""
    if init is None:
        return _tree.zeros_like(b), b
    return init, _tree.sub(b, operator(init))


def judged(
    operator: Operator,
    b: Any,
    x: Any,
    iterations: torch.Tensor,
    recurrence_rr: torch.Tensor,
    tolerance: torch.Tensor,
    failure: Callable[[], torch.Tensor] | None = None,
) -> LinearSolveResult[Any]:
    """The result of a recurrence method, judged by one true residual ``||b - A x||``."""
    true_norm = _tree.norm(_tree.sub(b, operator(x)))
    claimed = recurrence_rr <= tolerance * tolerance
    slack = rounding_slack(b)
    return finish(
        x, iterations, true_norm, tolerance, claimed=claimed, slack=slack, failure=failure
    )


# ---------------------------------------------------------------------------------------------
# The structural type user solvers follow (a type checker accepts any object with these members).


class LinearSolver(Protocol):
    """Solves ``(A + ridge I) x = b`` given ``matvec: v -> A v`` on pytrees shaped like ``b``.

    Calling it returns ``x`` (warning or raising per ``on_failure`` when it does not
    converge); :meth:`run` returns ``x`` with per-element statistics and never warns.
    """

    @property
    def on_failure(self) -> OnFailure:
        """``"warn"``, ``"raise"`` or ``"ignore"`` when a solve does not converge."""
        ...

    @property
    def failure_hint(self) -> str:
        """Advice appended to a non-convergence message."""
        ...

    # ``init`` is shaped like ``b`` (``TreeT | None`` on the solvers themselves). Here it is
    # ``Any``: mypy fails to match a ``TreeT | None`` parameter between two generic methods
    # when ``TreeT``'s bound is recursive, and would reject every solver (pyright does not).
    def __call__(self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None) -> TreeT: ...

    def run(
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None
    ) -> LinearSolveResult[TreeT]: ...


#: What every ``solve=`` accepts: a library solver or another :class:`LinearSolver`, a plain
#: callable ``solve(matvec, b) -> x`` (TorchOpt/JAXopt convention), or ``None`` (the default).
LinearSolveArg: TypeAlias = LinearSolver | Callable[[Any, Any], Any] | None
