"""Shared problems and the solver table used by every linear-solver test.

Each problem is a dense float64 matrix with a known condition number, so every test can compare
against an independent reference: ``torch.linalg.solve`` / ``lstsq`` in float64 on the same matrix.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import optree
import torch

import funcimplicit as fi

F64 = torch.float64

# --------------------------------------------------------------------------------------------
# Matrices


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    """A random orthogonal ``n x n`` matrix (float64)."""
    g = torch.randn(n, n, dtype=F64, generator=_generator(seed))
    q: torch.Tensor
    r: torch.Tensor
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r))


def spd(n: int, cond: float, seed: int) -> torch.Tensor:
    """Symmetric positive definite with eigenvalues log-spaced in ``[1, cond]``."""
    q = orthogonal(n, seed)
    eig = torch.logspace(0.0, math.log10(cond), n, dtype=F64)
    a = (q * eig) @ q.mT
    return (a + a.mT) / 2


def nonsymmetric(n: int, cond: float, seed: int) -> torch.Tensor:
    """Non-symmetric ``V diag(lam) V^{-1}`` with ``lam`` log-spaced in ``[1, cond]``.

    ``V = I + 0.2 G / sqrt(n)`` is well conditioned, so the eigenvalues (real, positive) stay
    those of the diagonal and the condition number of ``A`` is about ``cond`` times a small factor.
    """
    g = torch.randn(n, n, dtype=F64, generator=_generator(seed + 7919))
    v = torch.eye(n, dtype=F64) + 0.2 * g / math.sqrt(n)
    lam = torch.logspace(0.0, math.log10(cond), n, dtype=F64)
    solved: torch.Tensor = torch.linalg.solve(v.mT, (v * lam).mT)
    return solved.mT  # V diag(lam) V^{-1}


def contraction(n: int, radius: float, seed: int) -> torch.Tensor:
    """``A = I - J`` with ``J`` non-symmetric of spectral radius ``radius`` (Neumann converges)."""
    g = torch.randn(n, n, dtype=F64, generator=_generator(seed + 104729))
    eigenvalues: torch.Tensor = torch.linalg.eigvals(g)
    rho = eigenvalues.abs().max()
    return torch.eye(n, dtype=F64) - radius * g / rho


def rhs(n: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, dtype=F64, generator=_generator(seed + 31337)).to(dtype)


def cond(a: torch.Tensor) -> float:
    return float(torch.linalg.cond(a.to(F64)))


def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The independent reference: a dense float64 solve."""
    solution: torch.Tensor = torch.linalg.solve(a.to(F64), b.to(F64))
    return solution


def matvec_of(a: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: a @ v


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.to(F64) - ref) / torch.linalg.vector_norm(ref))


def rel_residual(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> float:
    a, x, b = a.to(F64), x.to(F64), b.to(F64)
    return float(torch.linalg.vector_norm(b - a @ x) / torch.linalg.vector_norm(b))


# --------------------------------------------------------------------------------------------
# Matrix kinds: name -> (builder(n, seed), condition-number knob)

#: kind -> builder(n, seed) returning a float64 matrix
KINDS: dict[str, Callable[[int, int], torch.Tensor]] = {
    "spd_well": lambda n, seed: spd(n, 10.0, seed),
    "spd_ill": lambda n, seed: spd(n, 1e6, seed),
    "nonsym_well": lambda n, seed: nonsymmetric(n, 10.0, seed),
    "nonsym_ill": lambda n, seed: nonsymmetric(n, 1e6, seed),
    "contraction": lambda n, seed: contraction(n, 0.9, seed),
}

SPD_KINDS = ("spd_well", "spd_ill")
GENERAL_KINDS = ("nonsym_well", "nonsym_ill", "contraction")


# --------------------------------------------------------------------------------------------
# The solver table


@dataclasses.dataclass(frozen=True)
class Entry:
    """One solver and the matrix kinds it is expected to solve."""

    name: str
    solver: Any  # a library solver: fi.CG, fi.Normal(fi.Cholesky()), fi.GMRES, fi.LU, ...
    kinds: tuple[str, ...]

    # What the tests need to know about a solver comes from its declared capabilities, so a
    # new solver is one row here.
    @property
    def symmetric_only(self) -> bool:
        return bool(self.solver.requires_symmetric)

    @property
    def iterative(self) -> bool:
        return isinstance(self.solver, fi.IterativeSolver)

    def with_(self, **changes: Any) -> Any:
        return dataclasses.replace(self.solver, **changes)


# Neumann needs about log(1e-10) / log(0.9) ~ 220 iterations at radius 0.9, above the default
# cap max(10 n, 100) for small n; the cap is a documented default, not what is tested here.
SOLVERS: tuple[Entry, ...] = (
    Entry("CG", fi.CG(), SPD_KINDS),
    # NormalCG squares the condition number: only well-conditioned systems are in its table.
    Entry("NormalCG", fi.NormalCG(), ("spd_well", "nonsym_well", "contraction")),
    Entry("GMRES", fi.GMRES(), SPD_KINDS + GENERAL_KINDS),
    # Restarted GMRES stagnates when the symmetric part of A is indefinite (as it can be for
    # I - J), so GMRES(5) is tabled only where the field of values stays away from 0.
    Entry("GMRES_restart5", fi.GMRES(restart=5, maxiter=2000), ("spd_well", "nonsym_well")),
    # BiCGStab needs 150-250 iterations on the cond-1e6 systems at n = 20, near the default cap.
    Entry("BiCGStab", fi.BiCGStab(maxiter=1000), SPD_KINDS + GENERAL_KINDS),
    Entry("Neumann", fi.Neumann(maxiter=1000), ("contraction",)),
    Entry("LU", fi.LU(), SPD_KINDS + GENERAL_KINDS),
    Entry("Cholesky", fi.Cholesky(), SPD_KINDS),
    # Normal(Cholesky) factorizes A^T A exactly, but squaring cond 1e6 leaves ~1e-4 relative
    # accuracy in float64: well-conditioned systems only, like NormalCG.
    Entry("Normal_Cholesky", fi.Normal(fi.Cholesky()), ("spd_well", "nonsym_well", "contraction")),
)

SOLVER_IDS = [e.name for e in SOLVERS]
ITERATIVE = tuple(e for e in SOLVERS if e.iterative)
DENSE = tuple(e for e in SOLVERS if not e.iterative)

#: (entry, kind) pairs every solver is expected to handle
PAIRS = [(e, k) for e in SOLVERS for k in e.kinds]
PAIR_IDS = [f"{e.name}-{k}" for e, k in PAIRS]


# --------------------------------------------------------------------------------------------
# Pytrees: a coupled operator on a tree of several leaves, and its dense reference


Pair = collections.namedtuple("Pair", ["left", "right"])

#: builders of tree structures from a flat vector: (name, shapes, pack(list_of_leaves) -> tree)
TREES: dict[str, tuple[tuple[tuple[int, ...], ...], Callable[[list[torch.Tensor]], Any]]] = {
    "tensor": (((6,),), lambda ls: ls[0]),
    "dict": (((3,), (2, 2), ()), lambda ls: {"a": ls[0], "b": ls[1], "c": ls[2]}),
    "tuple": (((2,), (3,)), lambda ls: (ls[0], ls[1])),
    "namedtuple": (((4,), (1, 2)), lambda ls: Pair(ls[0], ls[1])),
    "nested": (((2,), (), (3,)), lambda ls: {"x": (ls[0], ls[1]), "y": [ls[2]]}),
    "scalar": (((),), lambda ls: ls[0]),
}


def tree_leaves(tree: Any) -> list[torch.Tensor]:
    return optree.tree_leaves(tree, namespace="torch")


def ravel(tree: Any) -> torch.Tensor:
    return torch.cat([leaf.reshape(-1) for leaf in tree_leaves(tree)])


def unravel_like(vec: torch.Tensor, shapes: tuple[tuple[int, ...], ...], pack: Any) -> Any:
    sizes = [math.prod(s) for s in shapes]
    parts = torch.split(vec, sizes)
    return pack([p.reshape(s) for p, s in zip(parts, shapes, strict=True)])


def tree_matvec(a: torch.Tensor, shapes: Any, pack: Any) -> Callable[[Any], Any]:
    """``v -> A v`` on a tree whose raveled form is multiplied by the dense coupled ``A``."""

    def matvec(v: Any) -> Any:
        return unravel_like(a @ ravel(v), shapes, pack)

    return matvec


def tree_size(shapes: tuple[tuple[int, ...], ...]) -> int:
    return sum(math.prod(s) for s in shapes)
