"""Failure handling in typed code: ``ConvergenceError``, ``ConvergenceWarning``."""

import warnings

import torch

import funcimplicit as fi

dtype = torch.float64
A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=dtype)  # not symmetric: CG fails on it
b = torch.ones(2, dtype=dtype)


def matvec(v: torch.Tensor) -> torch.Tensor:
    return A @ v


try:
    fi.CG(maxiter=3, on_failure="raise")(matvec, b)
except fi.ConvergenceError as error:
    message: str = str(error)
    assert "did not converge" in message
else:
    raise AssertionError("CG should not converge on a skew-symmetric matrix")

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fi.CG(maxiter=3)(matvec, b)
assert any(issubclass(w.category, fi.ConvergenceWarning) for w in caught)

result = fi.CG(maxiter=3).run(matvec, b)  # run never warns: the flags say it
assert not bool(result.converged)
print(fi.__version__)
