"""What a solve reports: per-element statistics, and warnings or errors on failure."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Generic, Literal, Protocol

import torch

from .compat import physical, register_dataclass
from .tree import TreeT

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "LinearSolveResult",
    "OnFailure",
    "Statistics",
    "report",
]

#: What a solve does when it stops without meeting its tolerance (eager mode only).
OnFailure = Literal["warn", "raise", "ignore"]
ON_FAILURE_CHOICES: tuple[str, ...] = ("warn", "raise", "ignore")


class ConvergenceWarning(UserWarning):
    """A solver stopped without meeting its tolerance; its result may be inaccurate."""


class ConvergenceError(RuntimeError):
    """A solver in strict mode (``on_failure="raise"``) stopped without meeting its tolerance."""


@dataclass(frozen=True)
class LinearSolveResult(Generic[TreeT]):
    """A linear solve's solution and its statistics (one value per ``vmap`` element).

    Attributes:
        solution: ``x`` with the structure of the right-hand side (or of ``init``).
        iterations: iterations of the method taken (int64; 1 for dense solvers).
        residual_norm: ``||b - (A + ridge I) x||`` over all leaves jointly, at the end.
        tolerance: the threshold ``max(rtol * ||b||, atol)`` the residual was held to.
        converged: whether the solution is finite and ``residual_norm <= tolerance``, or,
            for CG, BiCGStab and GMRES, whose recurrence (or estimate) met the tolerance,
            ``residual_norm <= tolerance + sqrt(eps) * ||b||``: the true residual may drift
            from the recurrence by rounding, and a solve is not called failed for that.
        stagnated: where a method detects it (GMRES), whether an element stopped early,
            unconverged, because a restart cycle no longer lowered the residual (a singular
            or inconsistent system); ``None`` where the method does not detect it.
    """

    solution: TreeT
    iterations: torch.Tensor
    residual_norm: torch.Tensor
    tolerance: torch.Tensor
    converged: torch.Tensor
    stagnated: torch.Tensor | None = None


# A pytree node, so results can be returned from ``vmap``-ed functions.
register_dataclass(LinearSolveResult)


class Statistics(Protocol):
    """What :func:`report` reads from a result (linear or inner solve)."""

    @property
    def iterations(self) -> torch.Tensor: ...
    @property
    def residual_norm(self) -> torch.Tensor: ...
    @property
    def tolerance(self) -> torch.Tensor: ...
    @property
    def converged(self) -> torch.Tensor: ...


def report(
    result: Statistics, on_failure: OnFailure, call: str, hint: str = "", stacklevel: int = 3
) -> None:
    """Warn or raise if some element of ``result`` did not converge (eager mode only).

    Under ``torch.compile`` nothing is read on the host and nothing is reported; the
    per-element flags in ``result`` remain the way to check.
    """
    if on_failure == "ignore":
        return
    converged = physical(result.converged)
    if converged is None or bool(converged.all()):
        return
    residual = physical(result.residual_norm)
    tolerance = physical(result.tolerance)
    iterations = physical(result.iterations)
    if residual is None or tolerance is None or iterations is None:
        return
    failed = ~converged.reshape(-1)
    residual = residual.reshape(-1)[failed] if residual.numel() > 1 else residual.reshape(-1)
    tolerance = tolerance.reshape(-1)[failed] if tolerance.numel() > 1 else tolerance.reshape(-1)
    iterations = (
        iterations.reshape(-1)[failed] if iterations.numel() > 1 else iterations.reshape(-1)
    )
    count = (
        f"{int(failed.sum())} of {failed.numel()} problems" if failed.numel() > 1 else "the problem"
    )
    if not bool(torch.isfinite(residual).all()):
        detail = (
            "the residual is NaN or Inf (a diverging iteration, a singular or indefinite "
            "system, or non-finite input)"
        )
    else:
        worst = int(torch.argmax(residual / tolerance.clamp_min(torch.finfo(tolerance.dtype).tiny)))
        detail = (
            f"residual norm {float(residual[worst]):.3e} > tolerance "
            f"{float(tolerance[worst]):.3e} after {int(iterations[worst])} iterations"
        )
    stagnated = getattr(result, "stagnated", None)
    stuck = None if stagnated is None else physical(stagnated)
    if stuck is not None and bool((stuck.reshape(-1) & failed).any()):
        detail = (
            "stagnated: the residual stopped decreasing over a restart cycle (a singular "
            f"or inconsistent system?); {detail}"
        )
    message = f"{call}: did not converge for {count}: {detail}."
    if hint:
        message += f" {hint}"
    if on_failure == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel)
