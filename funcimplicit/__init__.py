"""funcimplicit: implicit differentiation of solutions, native to ``torch.func``."""

from . import nn, projections
from ._core.result import ConvergenceError as ConvergenceError
from ._core.result import ConvergenceWarning as ConvergenceWarning
from ._core.result import LinearSolveResult as LinearSolveResult
from ._core.result import Solution as Solution
from ._core.result import Status as Status
from ._core.tree import TensorTree as TensorTree
from ._inner.base import InnerMethod as InnerMethod
from ._inner.base import InnerProblem as InnerProblem
from ._inner.base import InnerSolver as InnerSolver
from ._inner.broyden import Broyden as Broyden
from ._inner.fixed_point import Anderson as Anderson
from ._inner.fixed_point import FixedPointIteration as FixedPointIteration
from ._inner.gradient import GradientDescent as GradientDescent
from ._inner.lbfgs import LBFGS as LBFGS
from ._inner.least_squares import GaussNewton as GaussNewton
from ._inner.least_squares import LevenbergMarquardt as LevenbergMarquardt
from ._inner.newton import Newton as Newton
from ._inner.projected import ProjectedGradient as ProjectedGradient
from ._inner.solve import least_squares as least_squares
from ._inner.solve import minimize as minimize
from ._inner.solve import solve_fixed_point as solve_fixed_point
from ._inner.solve import solve_root as solve_root
from ._linear.auto import Auto as Auto
from ._linear.base import IterativeSolver as IterativeSolver
from ._linear.base import LinearSolver as LinearSolver
from ._linear.base import LinearSolverBase as LinearSolverBase
from ._linear.bicgstab import BiCGStab as BiCGStab
from ._linear.cg import CG as CG
from ._linear.dense import LU as LU
from ._linear.dense import Cholesky as Cholesky
from ._linear.gmres import GMRES as GMRES
from ._linear.neumann import Neumann as Neumann
from ._linear.normal import Normal as Normal
from ._linear.normal import NormalCG as NormalCG
from ._rules.decorators import fixed_point as fixed_point
from ._rules.decorators import implicit_root as implicit_root
from ._rules.derivatives import root_jvp as root_jvp
from ._rules.derivatives import root_vjp as root_vjp
from ._rules.hypergradient import Hypergradient as Hypergradient
from ._rules.hypergradient import hypergradient as hypergradient
from ._rules.linear import linear_solve as linear_solve

__version__ = "0.1.0"

__all__ = [
    "Auto",
    "Anderson",
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
    "IterativeSolver",
    "LBFGS",
    "LU",
    "LevenbergMarquardt",
    "LinearSolveResult",
    "LinearSolver",
    "LinearSolverBase",
    "Neumann",
    "Newton",
    "Normal",
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
