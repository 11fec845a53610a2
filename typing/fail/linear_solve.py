"""Wrong calls of ``fi.linear_solve``."""

import torch

import funcimplicit as fi


def matvec(v: torch.Tensor) -> torch.Tensor:
    return 2.0 * v


b = torch.ones(2)
ints = [1, 2]
fi.linear_solve(lambda v: v, "abc")  # type: ignore[type-var]
fi.linear_solve(lambda v: v, ints)  # type: ignore[type-var]
# With a typed matvec, mypy also reports that matvec returns a Tensor where b is a str.
fi.linear_solve(matvec, "abc")  # type: ignore[arg-type, type-var]
fi.linear_solve(matvec, b, solve="cg")  # type: ignore[arg-type]
fi.linear_solve(matvec, b, solve=fi.CG)  # type: ignore[arg-type]
fi.linear_solve(matvec, b, solve=fi.Anderson())  # type: ignore[arg-type]
fi.linear_solve(matvec, b, tol=1e-6)  # type: ignore[call-arg]
fi.linear_solve(matvec, b, method=fi.CG())  # type: ignore[call-arg]
fi.linear_solve(matvec, b, init="zeros")  # type: ignore[type-var]
x: dict[str, torch.Tensor] = fi.linear_solve(matvec, b)  # type: ignore[arg-type]
