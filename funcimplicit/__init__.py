"""funcimplicit: implicit differentiation of solutions, native to ``torch.func``."""

from . import nn as nn
from . import projections as projections
from ._auto import Auto as Auto
from ._convergence import ConvergenceError as ConvergenceError
from ._convergence import ConvergenceWarning as ConvergenceWarning
from ._convergence import LinearSolveResult as LinearSolveResult
from ._dense import LU as LU
from ._dense import Cholesky as Cholesky
from ._fixed_point_methods import Anderson as Anderson
from ._fixed_point_methods import FixedPointIteration as FixedPointIteration
from ._gmres import GMRES as GMRES
from ._hypergradient import Hypergradient as Hypergradient
from ._hypergradient import hypergradient as hypergradient
from ._implicit import root_jvp as root_jvp
from ._implicit import root_vjp as root_vjp
from ._inner import InnerMethod as InnerMethod
from ._inner import InnerProblem as InnerProblem
from ._inner import Solution as Solution
from ._inner import Status as Status
from ._krylov import CG as CG
from ._krylov import BiCGStab as BiCGStab
from ._krylov import Neumann as Neumann
from ._krylov import NormalCG as NormalCG
from ._lbfgs import LBFGS as LBFGS
from ._least_squares import GaussNewton as GaussNewton
from ._least_squares import LevenbergMarquardt as LevenbergMarquardt
from ._linear_solve import linear_solve as linear_solve
from ._projected import ProjectedGradient as ProjectedGradient
from ._protocols import InnerSolver as InnerSolver
from ._protocols import LinearSolver as LinearSolver
from ._root import fixed_point as fixed_point
from ._root import implicit_root as implicit_root
from ._root_methods import Broyden as Broyden
from ._root_methods import GradientDescent as GradientDescent
from ._root_methods import Newton as Newton
from ._solve import least_squares as least_squares
from ._solve import minimize as minimize
from ._solve import solve_fixed_point as solve_fixed_point
from ._solve import solve_root as solve_root
from ._tree import TensorTree as TensorTree

__version__ = "0.1.0"

__all__ = [
    "Anderson",
    "Auto",
    "BiCGStab",
    "Broyden",
    "CG",
    "Cholesky",
    "ConvergenceError",
    "ConvergenceWarning",
    "FixedPointIteration",
    "GMRES",
    "GaussNewton",
    "GradientDescent",
    "Hypergradient",
    "InnerMethod",
    "InnerProblem",
    "InnerSolver",
    "LBFGS",
    "LU",
    "LevenbergMarquardt",
    "LinearSolveResult",
    "LinearSolver",
    "Neumann",
    "Newton",
    "NormalCG",
    "ProjectedGradient",
    "Solution",
    "Status",
    "TensorTree",
    "fixed_point",
    "hypergradient",
    "implicit_root",
    "least_squares",
    "linear_solve",
    "minimize",
    "nn",
    "projections",
    "root_jvp",
    "root_vjp",
    "solve_fixed_point",
    "solve_root",
]
