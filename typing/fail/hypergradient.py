"""Wrong calls of ``fi.hypergradient``."""

import torch

import funcimplicit as fi


def stationarity(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return w - lam


def outer(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return w.sum()


lam = torch.ones(3)
fi.hypergradient(outer, stationarity, lam, lam, argnums="1")  # type: ignore[arg-type]
fi.hypergradient(outer, stationarity, lam, lam, argnums=[1])  # type: ignore[arg-type]
fi.hypergradient(outer, stationarity, lam, lam, solve="cg")  # type: ignore[arg-type]
fi.hypergradient(outer, stationarity, lam, lam, solve=fi.Anderson())  # type: ignore[arg-type]
fi.hypergradient(outer, stationarity, lam, lam, method=fi.CG())  # type: ignore[call-arg]
fi.hypergradient(lambda w: "loss", stationarity, lam, lam)  # type: ignore[arg-type, return-value]
value: str = fi.hypergradient(outer, stationarity, lam, lam).value  # type: ignore[assignment]
