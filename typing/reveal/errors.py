"""Errors, warnings, the tree alias, the protocols and the version are public names too."""

from typing import assert_type

import torch

import funcimplicit as fi

error = fi.ConvergenceError("GMRES(matvec, b): did not converge")
assert_type(error, fi.ConvergenceError)
runtime_error: RuntimeError = error
warning = fi.ConvergenceWarning("did not converge")
user_warning: UserWarning = warning
assert_type(fi.__version__, str)


def solve_or_none(b: torch.Tensor) -> torch.Tensor | None:
    try:
        return fi.CG(on_failure="raise")(lambda v: v, b)
    except fi.ConvergenceError as caught:
        assert_type(caught, fi.ConvergenceError)
        return None
