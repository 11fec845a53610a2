"""Wrong calls of ``root_vjp`` and ``root_jvp``."""

import torch

import funcimplicit as fi


def T(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 2 * x - a


a = torch.ones(2)
fi.root_vjp(T, a, (a,), a, fi.GMRES())  # type: ignore[call-arg]  # solve is keyword-only
fi.root_vjp(T, a, (a,), a, solve="gmres")  # type: ignore[arg-type]
fi.root_vjp(T, "x", (a,), a)  # type: ignore[type-var]
fi.root_jvp(T, a, (a,), (a,), method=fi.LU())  # type: ignore[call-arg]
fi.root_jvp(T, a, (a,), (a,)).keys()  # type: ignore[attr-defined]
