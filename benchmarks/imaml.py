"""iMAML-style meta-gradients over many tasks (section ``imaml`` of ``run.py``).

The problem is ``_imaml.py``'s: sine-wave regression tasks, an MLP 1-40-40-1, 20 inner
gradient steps and 10 CG steps for the implicit meta-gradient. Per call, the mean
meta-gradient over 16 or 256 tasks (16 and 64 with ``--quick``), computed by:

- funcimplicit: ``torch.func.vmap`` over tasks of ``grad`` through ``fi.implicit_root``
  (eager), the same with ``fi.hypergradient`` (plain operations, eager), that one compiled
  whole (``torch.compile(fullgraph=True)``; full run, 16 tasks only: a cold compile takes
  minutes on a small CPU), and a Python loop over tasks;
- TorchOpt: its ``custom_root`` with ``solve_cg`` (10 steps) in a loop over tasks, and under
  ``vmap`` (which fails: the failure is recorded);
- unrolled differentiation in plain ``torch.func``: ``vmap(grad)`` through the 20 inner steps
  (MAML's meta-gradient, a different quantity: its difference column is not an error).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _imaml as im
import torch
from _measure import Method, max_abs_diff, peak_cuda_bytes, probe, run_methods
from _report import NOT_INSTALLED, Plot, Section, progress, table
from torch import Tensor
from torch.func import grad, vmap

__all__ = ["section_imaml"]


@dataclass(frozen=True)
class Settings:
    tasks: tuple[int, int]  # a small and a large number of tasks
    budget_s: float  # the small case's series, sized from a warm-up call of each method
    min_repeats: int
    max_repeats: int
    large_repeats: int  # the large case: repeats after the (untimed) probe call
    compiled: bool  # compile for the small case (the large one would compile once more)


FULL = Settings((16, 256), 8.0, 5, 40, 3, True)
QUICK = Settings((16, 64), 2.0, 3, 10, 3, False)


MetaGradients = Callable[[im.Params, im.Tasks], im.Params]


def _torchopt(to: Any, keys: list[str]) -> tuple[MetaGradients, MetaGradients]:
    """The mean meta-gradient with TorchOpt's ``custom_root``: a loop over tasks, and vmap.

    TorchOpt 0.7.3 wants each differentiated argument to be a tensor or a tuple of tensors
    (a dict is refused), so parameters travel as tuples in the order of ``keys``.
    """

    def as_dict(values: tuple[Tensor, ...]) -> im.Params:
        return dict(zip(keys, values, strict=True))

    def optimality(
        phi: tuple[Tensor, ...], theta: tuple[Tensor, ...], xs: Tensor, ys: Tensor
    ) -> tuple[Tensor, ...]:
        g = im.optimality(as_dict(phi), as_dict(theta), xs, ys)
        return tuple(g[k] for k in keys)

    def inner(
        init: tuple[Tensor, ...], theta: tuple[Tensor, ...], xs: Tensor, ys: Tensor
    ) -> tuple[Tensor, ...]:
        phi = im.inner_solve(as_dict(theta), xs, ys)
        return tuple(phi[k] for k in keys)

    solve = to.linear_solve.solve_cg(maxiter=im.CG_STEPS)
    adapted: Callable[..., tuple[Tensor, ...]]
    adapted = to.diff.implicit.custom_root(optimality, argnums=1, solve=solve)(inner)

    def loop(theta: im.Params, tasks: im.Tasks) -> im.Params:
        leaves = tuple(theta[k].detach().requires_grad_(True) for k in keys)
        grads = []
        for xs, ys, xq, yq in zip(*tasks, strict=True):
            phi = adapted(leaves, leaves, xs, ys)
            grads.append(torch.autograd.grad(im.meta_loss(as_dict(phi), xq, yq), leaves))
        return {k: torch.stack([g[i] for g in grads]).mean(0) for i, k in enumerate(keys)}

    def vmapped(theta: im.Params, tasks: im.Tasks) -> im.Params:
        def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, ...]:
            def loss(leaves: tuple[Tensor, ...]) -> Tensor:
                return im.meta_loss(as_dict(adapted(leaves, leaves, xs, ys)), xq, yq)

            out: tuple[Tensor, ...] = grad(loss)(tuple(theta[k] for k in keys))
            return out

        per_task = vmap(one)(*tasks)
        return {k: g.mean(0) for k, g in zip(keys, per_task, strict=True)}

    return loop, vmapped


def _unrolled_vmap(theta: im.Params, tasks: im.Tasks) -> im.Params:
    """MAML's meta-gradient: ``vmap(grad)`` through the inner steps (plain ``torch.func``)."""

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> im.Params:
        out: im.Params = grad(lambda th: im.meta_loss(im.inner_solve(th, xs, ys), xq, yq))(theta)
        return out

    per_task = vmap(one)(*tasks)
    return {k: v.mean(0) for k, v in per_task.items()}


def _methods(
    theta: im.Params,
    tasks: im.Tasks,
    to: Any | None,
    compiled: MetaGradients | None,
    why_not: str,
) -> list[Method]:
    """The rows of one number of tasks (the fi vmap row first: the reference)."""
    methods = [
        Method(
            "funcimplicit: vmap over tasks (implicit_root, eager)",
            lambda: im.meta_gradients_vmap(theta, tasks),
            "funcimplicit vmap",
            "fi",
        ),
        Method(
            "funcimplicit: vmap of fi.hypergradient (eager)",
            lambda: im.hyper_meta_gradients_vmap(theta, tasks),
            "fi.hypergradient vmap",
        ),
    ]
    name = "funcimplicit: the same, torch.compile(fullgraph=True)"
    if compiled is not None:
        methods.append(
            Method(name, lambda: compiled(theta, tasks), "funcimplicit compiled", "fi compiled")
        )
    else:
        methods.append(Method(name, None, "funcimplicit compiled", note=why_not))
    methods.append(
        Method(
            "funcimplicit: Python loop over tasks",
            lambda: im.meta_gradients_loop(theta, tasks),
            "funcimplicit loop",
        )
    )
    names = (
        "TorchOpt: Python loop over tasks (custom_root, solve_cg)",
        "TorchOpt: vmap over tasks",
    )
    if to is None:
        methods.append(Method(names[0], None, "TorchOpt loop", "TorchOpt", NOT_INSTALLED))
        methods.append(Method(names[1], None, "TorchOpt vmap", note=NOT_INSTALLED))
    else:
        loop, vmapped = _torchopt(to, list(theta))
        methods.append(Method(names[0], lambda: loop(theta, tasks), "TorchOpt loop", "TorchOpt"))
        methods.append(Method(names[1], lambda: vmapped(theta, tasks), "TorchOpt vmap"))
    methods.append(
        Method(
            "unrolled: vmap(grad) through the 20 inner steps (torch.func)",
            lambda: _unrolled_vmap(theta, tasks),
            "unrolled vmap",
            "unrolled",
        )
    )
    return methods


def section_imaml(quick: bool, device: str, to: Any | None) -> Section:
    """Section ``imaml``: mean meta-gradient over a small and a large number of tasks."""
    s = QUICK if quick else FULL
    theta = im.init_params(0, device=device)
    compiled = torch.compile(im.hyper_meta_gradients_vmap, fullgraph=True, dynamic=False)
    cuda = device == "cuda"
    sec = Section(
        "imaml",
        f"iMAML meta-gradients: {s.tasks[0]} and {s.tasks[1]} tasks, vmap vs a Python loop",
    )
    sec.markdown.append(
        "Sine-wave regression tasks (10 support and 10 query points each), MLP 1-40-40-1 "
        f"(float32), {im.INNER_STEPS} inner gradient steps, {im.CG_STEPS} CG steps for the "
        "implicit meta-gradient; per call the mean meta-gradient over all tasks. `rel. diff` = "
        "max abs difference to the first row over max |first row|: the implicit rows compute "
        "the same quantity (up to float32 rounding, which 10 CG steps amplify), the unrolled "
        "row a different one (MAML's gradient through the inner steps). "
        "`compile s` = the first call of the compiled row (tracing and compiling with a fresh "
        "inductor cache, then one run)."
        + (" `peak MB`: peak CUDA memory allocated during one call." if cuda else "")
    )
    rows: list[list[str]] = []
    for n_tasks in s.tasks:
        large = n_tasks == s.tasks[1]
        tasks = im.sample_tasks(n_tasks, 1, device=device)
        if not s.compiled:
            methods = _methods(theta, tasks, to, None, "not run with --quick")
        elif large:
            methods = _methods(theta, tasks, to, None, "not run: a second cold compile")
        else:
            methods = _methods(theta, tasks, to, compiled, "")
        compile_s = None
        ref = im.meta_gradients_vmap(theta, tasks)
        scale = max(float(v.abs().max()) for v in ref.values())
        for m in methods:
            start = time.perf_counter()
            error = functools.partial(max_abs_diff, reference=ref, scale=scale)
            probe(m, error, ops=not (large or quick))
            if m.role == "fi compiled" and m.fn is not None:
                compile_s = time.perf_counter() - start
            if cuda and m.fn is not None:
                m.peak = peak_cuda_bytes(m.fn)
        if large:
            run_methods(methods, 0.0, s.large_repeats, s.large_repeats, warmup=0)
        else:
            run_methods(methods, s.budget_s, s.min_repeats, s.max_repeats)
        base = methods[0].timing
        for m in methods:
            rows.append(
                [
                    str(n_tasks),
                    m.name,
                    m.time_cell(),
                    f"{m.timing.median / base.median:.2f}" if m.timing and base else "-",
                    "-" if m.error is None else f"{m.error:.1e}",
                    str(m.ops or "-"),
                    *(["-" if m.peak is None else f"{m.peak / 2**20:.1f}"] if cuda else []),
                    f"{compile_s:.1f}" if compile_s and m.role == "fi compiled" else "-",
                ]
            )
            sec.results.append(m.result(f"{n_tasks} tasks"))
        progress(f"iMAML {n_tasks} tasks")
    header = ["tasks", "method", "time ms (all tasks)", "time / fi vmap", "rel. diff"]
    header += ["aten ops", *(["peak MB"] if cuda else []), "compile s"]
    sec.markdown.append(table(header, rows))
    sec.markdown.append(
        ("" if quick else f"`aten ops` is counted for {s.tasks[0]} tasks only. ")
        + f"The {s.tasks[1]}-task case is timed with {s.large_repeats} repeats after one "
        "untimed call of each method."
    )
    sec.plots.append(
        Plot(
            "imaml",
            "iMAML mean meta-gradient: time per call",
            tuple(f"{n} tasks" for n in s.tasks),
            (
                "funcimplicit vmap",
                "fi.hypergradient vmap",
                "funcimplicit compiled",
                "funcimplicit loop",
                "TorchOpt loop",
                "TorchOpt vmap",
                "unrolled vmap",
            ),
        )
    )
    return sec
