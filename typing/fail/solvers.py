"""Wrong fields and calls of the solver objects."""

import torch

import funcimplicit as fi

b = torch.ones(2)
fi.CG(rtol="1e-6")  # type: ignore[arg-type]
fi.CG(on_failure="silent")  # type: ignore[arg-type]
fi.CG(1e-6)  # type: ignore[call-arg]  # the fields are keyword-only
fi.GMRES(restart=2.5)  # type: ignore[arg-type]
fi.LU(maxiter=10)  # type: ignore[call-arg]
fi.Cholesky(preconditioner=lambda v: v)  # type: ignore[call-arg]
fi.Neumann(tol=1e-3)  # type: ignore[call-arg]
fi.CG()(b, b)  # type: ignore[arg-type]
fi.GMRES()(lambda v: v, "b")  # type: ignore[type-var]
fi.CG().run(lambda v: v, b).solution.keys()  # type: ignore[attr-defined]
fi.CG().rtol = 1e-3  # type: ignore[misc]
