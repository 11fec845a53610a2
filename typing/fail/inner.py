"""Wrong calls of the inner solvers and their results."""

import torch

import funcimplicit as fi


def F(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + theta


def L(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.sum(), x


x0 = torch.zeros(2)
fi.solve_fixed_point(F, x0, x0, method=fi.GMRES())  # type: ignore[arg-type]
fi.solve_fixed_point(F, x0, x0, method="anderson")  # type: ignore[arg-type]
fi.solve_root(F, x0, x0, solve=fi.Newton())  # type: ignore[arg-type]
fi.solve_root(lambda x, t: x, "x0", x0)  # type: ignore[type-var]
fi.solve_root(F, x0, x0, tol=1e-3)  # type: ignore[call-arg]
fi.minimize(L, x0)  # type: ignore[arg-type]
fi.minimize(F, x0, x0, implicit="yes")  # type: ignore[arg-type]
fi.Anderson(history=2.5)  # type: ignore[arg-type]
fi.Newton(solve=fi.Anderson())  # type: ignore[arg-type]
fi.Broyden(on_failure="quiet")  # type: ignore[arg-type]
fi.FixedPointIteration(step_size=0.1)  # type: ignore[call-arg]
fi.solve_fixed_point(F, x0, x0).value.keys()  # type: ignore[attr-defined]
status: str = fi.Status.CONVERGED  # type: ignore[assignment]
