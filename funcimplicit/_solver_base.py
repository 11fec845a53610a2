"""The common shape of every linear solver: fields, validation, checks and reporting."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from . import _tree
from ._checks import check_same_layout, floating_leaves
from ._convergence import ON_FAILURE_CHOICES, LinearSolveResult, OnFailure, report
from ._loop import NONE_DONE, progress
from ._tree import TensorTree, TreeT

__all__ = [
    "CallableSolver",
    "IterativeSolver",
    "LinearSolverBase",
    "Operator",
    "as_linear_solver",
    "default_maxiter",
    "default_rtol",
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
    """Fields and behaviour shared by all linear solvers.

    A solver solves ``(A + ridge I) x = b`` given only ``matvec: v -> A v`` on pytrees. Calling
    it returns ``x``; :meth:`run` also returns per-element statistics. A direct call is not
    implicitly differentiated: use :func:`funcimplicit.linear_solve` for derivatives.
    """

    rtol: float | None = None
    atol: float = 0.0
    ridge: float = 0.0
    on_failure: OnFailure = "warn"

    #: Whether the method requires a symmetric (positive definite) operator.
    requires_symmetric: ClassVar[bool] = False
    #: Whether the method only applies the operator to trees (never differentiates or vmaps
    #: it), so that a cheaper operator without derivatives may be handed to it.
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
        return non_finite_visible(self._solve(operator, b, init, tolerance), b_norm)

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

    def _solve(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        raise NotImplementedError


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
            Converged elements are frozen either way, so results do not depend on it.
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
) -> LinearSolveResult[TreeT]:
    """Assemble a result from the true final residual ``||b - A x||``.

    Converged iff that residual is finite and either meets ``tolerance`` or, for methods
    that stop on a recurrence residual which met the tolerance (``claimed``), exceeds it by
    at most ``slack``: the rounding drift between recurrence and true residual. An operator
    that breaks the method's assumptions (CG on a non-symmetric matrix) fails it by far.
    """
    finite = torch.isfinite(residual_norm)
    converged = finite & (residual_norm <= tolerance)
    if claimed is not None:
        converged = converged | (finite & claimed & (residual_norm <= tolerance + slack))
    return LinearSolveResult(solution, iterations, residual_norm, tolerance, converged)


def non_finite_visible(
    result: LinearSolveResult[TreeT], b_norm: torch.Tensor
) -> LinearSolveResult[TreeT]:
    """NaN solution wherever the right-hand side, an operator product or ``x`` is not finite.

    A Krylov method stops at once on a NaN residual and would hand back its start (zeros):
    a NaN right-hand side (or cotangent, in a backward pass) would become the answer 0 or a
    zero gradient. Whatever ``on_failure`` says (it governs non-convergence only), such an
    element's solution is NaN and it is not converged. Per element (a ``where`` on the
    element's own flag, no host branching but one read to skip the ``where`` when nothing
    is bad), so one NaN ``vmap`` element never poisons the others.
    """
    bad = torch.logical_not(
        torch.isfinite(b_norm)
        & torch.isfinite(result.residual_norm)
        & torch.isfinite(_tree.norm(result.solution))
    )
    if progress(bad) == NONE_DONE:
        return result
    solution = _tree.map_leaves(lambda leaf: torch.where(bad, torch.nan, leaf), result.solution)
    return replace(result, solution=solution, converged=result.converged & ~bad)


def rounding_slack(b: TensorTree) -> torch.Tensor:
    """``sqrt(eps) * ||b||``: how far a recurrence residual may drift from the true one."""
    dtype = _tree.flatten(b)[0][0].dtype
    return math.sqrt(torch.finfo(dtype).eps) * _tree.norm(b)


def _accepts_init(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called with an ``init=`` keyword (a warm start)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call it the plain way
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "init" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )


def _under_transform(tree: TensorTree) -> bool:
    """Whether a leaf of ``tree`` is wrapped by a ``torch.func`` transform (private API)."""
    try:
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        return any(wrapped(leaf) for leaf in _tree.flatten(tree)[0])
    except Exception:  # the private API moved: unknown
        return False


@dataclass(frozen=True, kw_only=True)
class CallableSolver(LinearSolverBase):
    """A user's linear solver, judged like the library's own: by its true residual.

    ``solve`` is either a plain callable ``solve(matvec, b) -> x`` (the TorchOpt/JAXopt
    convention; called as ``solve(matvec, b, init=x0)`` when it accepts ``init`` and a warm
    start is given) or an object following :class:`funcimplicit.LinearSolver` (its ``run``
    is used). Whatever it returns, the adapter computes ``||b - (A + ridge I) x||`` once and
    holds it to ``max(rtol * ||b||, atol)`` plus the rounding slack ``sqrt(eps) * ||b||``
    that the library allows its own Krylov methods (the user's answer is a claim, like a
    recurrence residual; a direct solve of a moderately ill-conditioned system passes, a
    wrong answer fails by far). A protocol object is held to its own reported tolerance and
    its own ``converged`` flag as well. A failure warns or raises per ``on_failure``, like
    every other solver, so a wrong user solver is never silent.

    The adapter calls ``solve`` as is. Inside a backward pass it may run under
    ``torch.func.vmap`` even when the user never calls ``vmap`` (``jacrev``, ``jacfwd`` and
    ``hessian`` vmap the backward), so ``solve`` must then be vmap-safe: no ``.item()``,
    ``if``/``while`` on tensor values, or in-place writes into captured tensors. Solvers
    built from torch operations (``torch.linalg.solve`` on a matrix from
    ``torch.func.jacfwd(matvec)``, or a library solver ``fi.CG()(matvec, b)``) are. A
    failure under a transform is re-raised with that explanation.

    Attributes:
        solve: the user's callable or protocol object.
        rtol: relative tolerance (``None``: 1e-10 in float64, 1e-5 in float32).
    """

    solve: Callable[..., Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.solve) or isinstance(self.solve, type):
            raise TypeError(
                "CallableSolver: solve must be a callable solve(matvec, b) -> x or an object "
                f"with run(matvec, b, init); received {type(self.solve).__name__}."
            )

    @property
    def _protocol(self) -> bool:
        """Whether ``solve`` follows :class:`funcimplicit.LinearSolver` (has ``run``)."""
        return callable(getattr(self.solve, "run", None))

    @property
    def _name(self) -> str:
        name = getattr(self.solve, "__qualname__", None) or type(self.solve).__name__
        return str(name)

    @property
    def failure_hint(self) -> str:
        hint = getattr(self.solve, "failure_hint", None) if self._protocol else None
        if isinstance(hint, str):
            return hint
        return (
            f"The user solver {self._name} returned x with ||b - A x|| above the tolerance: "
            "check it, or use a library solver such as fi.GMRES() or fi.LU()."
        )

    def _solve(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        call = f"{self._name}(matvec, b) (a user linear solver)"
        try:
            if self._protocol:
                claim = self.solve.run(operator, b, init)  # type: ignore[attr-defined]
                x = claim.solution
            elif init is not None and _accepts_init(self.solve):
                x = self.solve(operator, b, init=init)
            else:
                x = self.solve(operator, b)
        except Exception as error:
            if not _under_transform(b):
                raise
            raise RuntimeError(
                f"{call} failed under a torch.func transform ({type(error).__name__}: "
                f"{error}). Inside a backward pass the solve runs under vmap even when you "
                "never call vmap (jacrev, jacfwd and hessian vmap it), so it must be "
                "vmap-safe: no .item(), no if/while on tensor values. Write it with torch "
                "operations or use a library solver such as fi.GMRES()."
            ) from error
        check_same_layout(x, b, call, "the returned x")
        ax = operator(x)
        if self._protocol:
            # the object solved (A + its ridge) x = b: judge it on that system
            ridge = getattr(self.solve, "ridge", 0.0)
            if isinstance(ridge, int | float) and not isinstance(ridge, bool) and ridge:
                ax = _tree.axpy(float(ridge), x, ax)
        residual = _tree.norm(_tree.sub(b, ax))
        slack = rounding_slack(b)
        if not self._protocol:
            # the answer is a claim, like a recurrence residual that met the tolerance
            claimed = torch.ones_like(residual, dtype=torch.bool)
            iterations = torch.ones_like(residual, dtype=torch.int64)
            return finish(x, iterations, residual, tolerance, claimed=claimed, slack=slack)
        # held to its own reported tolerance, and its own verdict counts too
        tolerance = claim.tolerance.to(residual.dtype)
        claimed = claim.converged.to(torch.bool)
        iterations = claim.iterations.to(torch.int64)
        judged = finish(x, iterations, residual, tolerance, claimed=claimed, slack=slack)
        return LinearSolveResult(x, iterations, residual, tolerance, judged.converged & claimed)


def as_linear_solver(solve: object, call: str) -> LinearSolverBase:
    """The linear solver that ``solve=`` names, for every entry point that takes one.

    A library solver (a :class:`LinearSolverBase`) is returned unchanged; ``None`` gives
    the default :class:`funcimplicit.Auto` (dense LU while small, GMRES beyond); a plain
    callable ``solve(matvec, b) -> x`` or an object
    following :class:`funcimplicit.LinearSolver` is wrapped in a :class:`CallableSolver`,
    which judges its answer by the true residual. Anything else is a ``TypeError`` naming
    ``call``.
    """
    if isinstance(solve, LinearSolverBase):
        return solve
    if solve is None:
        from ._auto import Auto  # the default; _auto imports this module

        return Auto()
    expected = (
        "a linear solver (a library solver such as fi.CG() or fi.GMRES(), an object "
        "following fi.LinearSolver, or a callable solve(matvec, b) -> x)"
    )
    if isinstance(solve, type):
        raise TypeError(
            f"{call}: solve must be {expected}; received the class {solve.__name__}. "
            f"Pass an instance, e.g. solve={solve.__name__}()."
        )
    if not callable(solve):
        raise TypeError(
            f"{call}: solve must be {expected}; received {type(solve).__name__} "
            f"({solve!r:.60}). An inner solver (method=) is not a linear solver: "
            "pass e.g. solve=fi.GMRES()."
            if callable(getattr(solve, "run", None))
            else f"{call}: solve must be {expected}; received {type(solve).__name__} "
            f"({solve!r:.60}). Pass one of those, e.g. solve=fi.GMRES()."
        )
    if callable(getattr(solve, "run", None)):  # follows fi.LinearSolver
        on_failure = getattr(solve, "on_failure", "warn")
        if on_failure not in ON_FAILURE_CHOICES:
            raise ValueError(
                f"{call}: solve.on_failure must be one of {ON_FAILURE_CHOICES}; "
                f"received {on_failure!r}."
            )
        return CallableSolver(solve=solve, on_failure=on_failure)  # type: ignore[arg-type]
    return CallableSolver(solve=solve)
