"""A deep-equilibrium layer: fixed-point forward, implicit backward (section ``deq`` of ``run.py``).

``z = tanh(W z + U x + b)`` with batch 32, hidden 128, input 64 and ``||W||_2 = 0.9``, in
float32. The forward pass is a plain fixed-point loop to tolerance (as users write it) or
funcimplicit's own ``solve_fixed_point`` with Anderson acceleration; the backward pass is
implicit (``fi.fixed_point`` with GMRES, Neumann or NormalCG; TorchOpt's ``custom_root`` with
its default ``solve_normal_cg``) or backpropagation through the forward iterations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from _measure import (
    CountingMatvec,
    Method,
    fi_backward_iterations,
    peak_cuda_bytes,
    probe,
    run_methods,
    saved_bytes,
)
from _report import NOT_INSTALLED, Plot, Section, progress, table

import funcimplicit as fi

__all__ = ["deq_forward", "deq_map", "section_deq"]

BATCH, HIDDEN, INPUTS = 32, 128, 64
TOL = 1e-5  # forward: ||F(z) - z|| <= tol ||z||; backward solves: rtol
Params = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def deq_map(
    z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """The layer ``F(z) = tanh(z W^T + x U^T + b)`` on a batch of rows."""
    return torch.tanh(z @ W.T + x @ U.T + b)


def _residual(
    z: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    return deq_map(z, x, W, U, b) - z


def deq_forward(
    z: torch.Tensor,
    x: torch.Tensor,
    W: torch.Tensor,
    U: torch.Tensor,
    b: torch.Tensor,
    tol: float = TOL,
    maxiter: int = 500,
) -> tuple[torch.Tensor, int]:
    """Plain fixed-point iteration to tolerance (a host read per iteration, as users write it)."""
    for k in range(1, maxiter + 1):
        z_next = deq_map(z, x, W, U, b)
        done = float((z_next - z).detach().norm()) <= tol * float(z_next.detach().norm())
        z = z_next
        if done:
            return z, k
    return z, maxiter


def _problem(device: str) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """``(W, U, b)``, the input ``x`` and a target, in float64 on ``device``."""
    g = torch.Generator().manual_seed(2)
    dt = torch.float64
    W = torch.randn(HIDDEN, HIDDEN, generator=g, dtype=dt)
    W = 0.9 * W / torch.linalg.matrix_norm(W, 2)
    U = torch.randn(HIDDEN, INPUTS, generator=g, dtype=dt) / math.sqrt(INPUTS)
    b = 0.1 * torch.randn(HIDDEN, generator=g, dtype=dt)
    x = torch.randn(BATCH, INPUTS, generator=g, dtype=dt)
    target = torch.randn(BATCH, HIDDEN, generator=g, dtype=dt)
    return (W.to(device), U.to(device), b.to(device)), x.to(device), target.to(device)


def _loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z - target).pow(2).sum() / z.shape[0]


def _layer_loss(
    layer: Callable[..., torch.Tensor],
    z0: torch.Tensor,
    x: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    target: torch.Tensor,
) -> torch.Tensor:
    return _loss(layer(z0, x, *params), target)


def _fi_layer(solve: Any) -> Callable[..., torch.Tensor]:
    @fi.fixed_point(deq_map, argnums=(2, 3, 4), solve=solve)
    def forward(
        z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        return deq_forward(z, x, W, U, b)[0]

    return forward


def _anderson_layer(
    z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    method = fi.Anderson(rtol=TOL, atol=0.0, maxiter=500)
    return fi.solve_fixed_point(
        deq_map, z, x, W, U, b, method=method, solve=fi.GMRES(rtol=TOL)
    ).value


def _unrolled_layer(
    z: torch.Tensor, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    return deq_forward(z, x, W, U, b)[0]


def _torchopt_layer(to: Any, solve: Any) -> Callable[..., torch.Tensor]:
    """TorchOpt's ``custom_root`` of ``F(z) - z``: differentiated arguments first (z, W, U, b,
    x), argnums (1, 2, 3), as TorchOpt 0.7.3 needs; called as ``(z, x, W, U, b)``."""

    def forward(
        z: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        return deq_forward(z, x, W, U, b)[0]

    layer = to.diff.implicit.custom_root(_residual, argnums=(1, 2, 3), solve=solve)(forward)
    return lambda z, x, W, U, b: layer(z, W, U, b, x)


def section_deq(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``deq``: one forward and backward pass of the layer per call."""
    budget, min_repeats, max_repeats = (1.0, 3, 15) if quick else (6.0, 5, 60)
    cuda = device == "cuda"
    params64, x64, target64 = _problem(device)
    params = tuple(t.float() for t in params64)
    W, U, b = params
    x, target = x64.float(), target64.float()
    z0 = torch.zeros(BATCH, HIDDEN, device=device)

    # Reference: float64 backprop through a forward converged to 1e-14 (no implicit library).
    Wr, Ur, br = (t.clone().requires_grad_(True) for t in params64)
    z_ref, ref_iters = deq_forward(z0.double(), x64, Wr, Ur, br, tol=1e-14, maxiter=2000)
    ref = torch.autograd.grad(_loss(z_ref, target64), (Wr, Ur, br))
    ref_scale = max(float(r.abs().max()) for r in ref)
    fwd_iters = deq_forward(z0, x, W, U, b)[1]

    def hypergrad(layer: Callable[..., torch.Tensor]) -> Callable[[], tuple[torch.Tensor, ...]]:
        def call() -> tuple[torch.Tensor, ...]:
            ps = tuple(t.detach().requires_grad_(True) for t in params)
            return torch.autograd.grad(_layer_loss(layer, z0, x, ps, target), ps)

        return call

    solvers = {
        "GMRES": fi.GMRES(rtol=TOL),
        "Neumann": fi.Neumann(rtol=TOL),
        "NormalCG": fi.NormalCG(rtol=TOL),
    }
    layers: dict[str, Callable[..., torch.Tensor]] = {
        f"funcimplicit fixed_point, {k}": _fi_layer(v) for k, v in solvers.items()
    }
    layers["funcimplicit solve_fixed_point (Anderson fwd, GMRES bwd)"] = _anderson_layer
    layers["unrolled: backprop through the loop"] = _unrolled_layer
    to_name = "TorchOpt custom_root(F(z) - z), solve_normal_cg"
    if to is not None:
        layers[to_name] = _torchopt_layer(to, to.linear_solve.solve_normal_cg(rtol=TOL))
    short = {
        "funcimplicit fixed_point, GMRES": ("funcimplicit (GMRES)", None),
        "funcimplicit fixed_point, Neumann": ("funcimplicit (Neumann)", None),
        "funcimplicit fixed_point, NormalCG": ("funcimplicit (NormalCG)", "fi"),
        "funcimplicit solve_fixed_point (Anderson fwd, GMRES bwd)": ("funcimplicit Anderson", None),
        "unrolled: backprop through the loop": ("unrolled", "unrolled"),
        to_name: ("TorchOpt (normal CG)", "TorchOpt"),
    }
    forward_only = Method(
        "forward loop only (no grad)", lambda: deq_forward(z0, x, W, U, b)[0], "forward only"
    )
    methods = [forward_only]
    for name, layer in layers.items():
        methods.append(Method(name, hypergrad(layer), *short[name]))
    if to is None:
        methods.append(Method(to_name, None, *short[to_name], note=NOT_INSTALLED))

    def rel_error(out: tuple[torch.Tensor, ...]) -> float:
        pairs = zip(out, ref, strict=True)
        return max(float((o.double() - r).abs().max()) for o, r in pairs) / ref_scale

    probe(forward_only)
    for m in methods[1:]:
        probe(m, rel_error)
        if m.fn is None:
            continue
        ps = tuple(t.detach().requires_grad_(True) for t in params)
        m.saved = saved_bytes(functools.partial(_layer_loss, layers[m.name], z0, x, ps, target))
        if cuda:
            m.peak = peak_cuda_bytes(m.fn)
    _iterations(methods, hypergrad, solvers, to, fwd_iters)
    run_methods(methods, budget, min_repeats, max_repeats)
    base, fwd = methods[1].timing, forward_only.timing
    case = f"batch {BATCH}, hidden {HIDDEN}"
    sec = Section("deq", f"DEQ layer z = tanh(W z + U x + b): {case}, float32")
    sec.markdown.append(
        f"Input {INPUTS}, ||W||_2 = 0.9. Forward: plain fixed-point loop until "
        f"||F(z) - z|| <= {TOL:g} ||z|| ({fwd_iters} iterations here), or funcimplicit's "
        "`solve_fixed_point` with Anderson(5); loss 0.5||z* - target||^2 / batch; gradients "
        f"in (W, U, b) per call (forward + backward). Backward linear solves: rtol {TOL:g}. "
        "Unrolled = the same loop recorded by autograd (plain PyTorch). `rel. error` = max "
        "abs difference of the gradients to a float64 reference (backprop through a forward "
        f"converged to 1e-14, {ref_iters} iterations) over max |reference|. `bwd iters` = "
        "iterations of the backward solve (fi) or matvecs (TorchOpt: a normal-CG iteration "
        "costs a JVP-like matvec and a VJP). `saved MB`: storages saved for backward by the "
        "forward pass (section `logistic`)."
        + (" `peak MB`: peak CUDA memory allocated during one call." if cuda else "")
    )
    rows = []
    for m in methods:
        rows.append(
            [
                m.name,
                m.time_cell(),
                f"{m.timing.median / base.median:.2f}" if (m.timing and base) else "-",
                f"{(m.timing.median - fwd.median) * 1e3:.2f}"
                if (m.timing and fwd and m is not forward_only)
                else "-",
                m.iters,
                str(m.ops or "-"),
                "-" if m.saved is None else f"{m.saved / 2**20:.3f}",
                *(["-" if m.peak is None else f"{m.peak / 2**20:.3f}"] if cuda else []),
                "-" if m.error is None else f"{m.error:.1e}",
            ]
        )
        sec.results.append(m.result(case))
    header = ["method", "time ms", "time / fi GMRES", "minus forward ms", "bwd iters"]
    header += ["aten ops", "saved MB", *(["peak MB"] if cuda else []), "rel. error"]
    sec.markdown.append(table(header, rows))
    sec.plots.append(
        Plot(
            "deq",
            f"DEQ layer (batch {BATCH}, hidden {HIDDEN}): forward + backward",
            (case,),
            tuple(m.short for m in methods),
        )
    )
    progress("DEQ")
    return sec


def _iterations(
    methods: list[Method],
    hypergrad: Callable[[Callable[..., torch.Tensor]], Callable[[], Any]],
    solvers: dict[str, Any],
    to: Any | None,
    fwd_iters: int,
) -> None:
    """The `bwd iters` column: backward iterations (fi), matvecs (TorchOpt), or forward ones."""
    for m in methods:
        if m.fn is None:
            continue
        key = m.name.rsplit(", ", 1)[-1]
        if m.name.startswith("funcimplicit fixed_point") and key in solvers:
            m.iters = fi_backward_iterations(
                lambda solve: hypergrad(_fi_layer(solve))(), solvers[key]
            )
        elif m.name.startswith("unrolled"):
            m.iters = f"{fwd_iters} (fwd)"
        elif m.name.startswith("TorchOpt") and to is not None:
            counted = CountingMatvec(to.linear_solve.solve_normal_cg(rtol=TOL))
            hypergrad(_torchopt_layer(to, counted))()
            m.iters = str(counted.calls)
