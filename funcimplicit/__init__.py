"""funcimplicit: implicit differentiation of solutions, native to ``torch.func``."""

from ._convergence import ConvergenceError as ConvergenceError
from ._convergence import ConvergenceWarning as ConvergenceWarning
from ._convergence import LinearSolveResult as LinearSolveResult
from ._dense import LU as LU
from ._dense import Cholesky as Cholesky
from ._gmres import GMRES as GMRES
from ._implicit import root_jvp as root_jvp
from ._implicit import root_vjp as root_vjp
from ._krylov import CG as CG
from ._krylov import BiCGStab as BiCGStab
from ._krylov import Neumann as Neumann
from ._krylov import NormalCG as NormalCG
from ._linear_solve import linear_solve as linear_solve
from ._root import fixed_point as fixed_point
from ._root import implicit_root as implicit_root
from ._tree import TensorTree as TensorTree

__version__ = "0.1.0"

__all__ = [
    "CG",
    "GMRES",
    "LU",
    "BiCGStab",
    "Cholesky",
    "ConvergenceError",
    "ConvergenceWarning",
    "LinearSolveResult",
    "Neumann",
    "NormalCG",
    "TensorTree",
    "fixed_point",
    "implicit_root",
    "linear_solve",
    "root_jvp",
    "root_vjp",
]
