"""What a solve reports: per-element statistics, and warnings or errors on failure."""

from __future__ import annotations

import enum
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
    "Solution",
    "Statistics",
    "Status",
    "report",
]

#: What a solve does when it stops without meeting its tolerance (eager mode only).
OnFailure = Literal["warn", "raise", "ignore"]
ON_FAILURE_CHOICES: tuple[str, ...] = ("warn", "raise", "ignore")


class ConvergenceWarning(UserWarning):
    """A solver stopped without meeting its tolerance; its result may be inaccurate."""


class ConvergenceError(RuntimeError):
    """A solver in strict mode (``on_failure="raise"``) stopped without meeting its tolerance."""


class Status(enum.IntEnum):
    """Why a solve stopped (the ``status`` tensor holds these values per element).

    ``CONVERGED`` is the only success. The others say what the solver detected:
    ``MAX_ITERATIONS`` (ran out of iterations, or stopped without meeting the tolerance),
    ``NONFINITE`` (NaN or Inf appeared: diverged, or the function or system is not finite
    there), ``BREAKDOWN`` (a Krylov recurrence or a factorization broke down: a singular or
    ill-suited system), ``INDEFINITE`` (CG met negative or zero curvature: the operator is
    not positive definite) and ``STAGNATION`` (GMRES: a restart cycle no longer lowered the
    residual, a singular or inconsistent system; an inner method: it stopped itself, no step
    lowering its merit any more, e.g. L-BFGS or Levenberg-Marquardt).
    """

    CONVERGED = 0
    MAX_ITERATIONS = 1
    NONFINITE = 2
    BREAKDOWN = 3
    INDEFINITE = 4
    STAGNATION = 5


@dataclass(frozen=True)
class Solution(Generic[TreeT]):
    """A solve's result, linear or inner (one value per ``vmap`` element for each statistic).

    Attributes:
        value: the solution, with the structure of ``init`` (or of the right-hand side).
            From an inner solver it carries implicit derivatives in the solver's arguments
            unless ``implicit=False``.
        iterations: iterations taken (int64; 1 for dense linear solvers).
        residual_norm: for a linear solve ``||b - (A + ridge I) x||``; for an inner solve
            ``||T(value)||`` (``||F(value) - value||`` for fixed points, the gradient norm
            for minimization and least squares, the projected-gradient mapping's norm for
            ``ProjectedGradient``); over all leaves jointly, at the end.
        tolerance: the threshold it was held to: ``max(rtol * ||b||, atol)`` for a linear
            solve, ``max(atol, rtol * ||value||)`` for an inner one.
        converged: the residual is finite and meets the tolerance (for CG, BiCGStab and
            GMRES, whose recurrence or estimate met it, the true residual may exceed it by
            the rounding drift ``sqrt(eps) * ||b||``). Equal to ``status == CONVERGED``.
        reason: what stopped an unconverged element, where the solver detected it (a
            :class:`Status` code per element, int64); ``None`` means ``MAX_ITERATIONS``.
            Read :attr:`status` rather than this field.
    """

    value: TreeT
    iterations: torch.Tensor
    residual_norm: torch.Tensor
    tolerance: torch.Tensor
    converged: torch.Tensor
    reason: torch.Tensor | None = None

    @property
    def status(self) -> torch.Tensor:
        """A :class:`Status` code per element (int64): ``CONVERGED`` where ``converged``,
        else ``NONFINITE`` for a non-finite residual, else ``reason``.

        Computed when read, so a solve that nobody asks about costs no extra operations.
        """
        reason = int(Status.MAX_ITERATIONS) if self.reason is None else self.reason
        failed = torch.where(torch.isfinite(self.residual_norm), reason, int(Status.NONFINITE))
        return torch.where(self.converged, int(Status.CONVERGED), failed)

    @property
    def solution(self) -> TreeT:
        """``value`` (the name linear solves used before results were unified)."""
        return self.value

    @property
    def stagnated(self) -> torch.Tensor:
        """``status == Status.STAGNATION`` (GMRES, and inner methods that stop themselves)."""
        return self.status == int(Status.STAGNATION)


#: The result of a linear solve: the same type as an inner solve's (``.solution`` is ``.value``).
LinearSolveResult = Solution

# A pytree node, so results can be returned from ``vmap``-ed functions.
register_dataclass(Solution)


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
    codes = getattr(result, "status", None)
    codes = None if codes is None else physical(codes)
    reasons = ""
    if codes is not None:
        codes = codes.reshape(-1)[failed] if codes.numel() > 1 else codes.reshape(-1)
        known = {int(s): s.name.lower() for s in Status}
        names = sorted({known.get(int(c), str(int(c))) for c in set(codes.tolist()) if int(c) != 0})
        reasons = f" ({', '.join(names)})" if names else ""
        if int(Status.STAGNATION) in codes.tolist():
            detail = (
                "stagnated: the solver could make no more progress (GMRES: a restart cycle "
                "did not lower the residual, a singular or inconsistent system?; an inner "
                f"method: no step lowers its merit any more); {detail}"
            )
    message = f"{call}: did not converge for {count}{reasons}: {detail}."
    if hint:
        message += f" {hint}"
    if on_failure == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel)
