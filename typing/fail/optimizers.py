"""Wrong calls of least_squares, the new methods and the projections."""

import torch

import funcimplicit as fi

x0 = torch.zeros(2)
fi.least_squares(lambda p: p, "p0")  # type: ignore[type-var]
fi.least_squares(lambda p: p, x0, method=fi.CG())  # type: ignore[arg-type]
fi.LBFGS(memory=2.5)  # type: ignore[arg-type]
fi.LevenbergMarquardt(solve=fi.LBFGS())  # type: ignore[arg-type]
fi.ProjectedGradient(step_size=0.1)  # type: ignore[call-arg]
fi.projections.simplex(x0, total="one")  # type: ignore[arg-type]
fi.projections.nonnegative([1.0, 2.0])  # type: ignore[type-var]
