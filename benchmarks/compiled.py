"""torch.compile against eager: per-call time, compile time and agreement.

Run from the repository root:

    PYTHONPATH=. python benchmarks/compiled.py            # full run (compiles take minutes)
    PYTHONPATH=. python benchmarks/compiled.py --quick    # fewer repeats, iMAML only (~2 min)
    PYTHONPATH=. python benchmarks/compiled.py --device cuda
    PYTHONPATH=. python benchmarks/compiled.py --only user    # the user-code rows (4.) only

Problems (each compiled with ``fullgraph=True``: one graph, no graph break, so no host read
and no host-device synchronization inside the compiled loops):

1. A fixed-point solve ``z = tanh(W z + U x + b)`` (batch 32, hidden 128, ||W||_2 = 0.9) by
   ``fi.Anderson(maxiter=15)`` without derivatives (``implicit=False``).
2. A ridge hypergradient (d = 100, n = 200): ``fi.hypergradient`` with ``fi.CG(maxiter=20)``;
   the eager reference columns also show ``fi.implicit_root`` + ``torch.autograd.grad``.
3. iMAML-style meta-gradients over 16 sine-wave tasks (MLP 1-40-40-1, 20 inner
   gradient-descent steps, 10 CG steps; see ``_imaml.py``), ``vmap`` over tasks: eager
   ``fi.implicit_root`` + ``vmap(grad)``, eager ``fi.hypergradient`` under ``vmap``, and the
   compiled ``vmap`` of ``fi.hypergradient``.

4. Compiled user code: ``torch.compile`` (default ``fullgraph=False``) of the user's own
   function around ``fi.implicit_root``, side by side with the same function eager, each
   call with new tensors (a recompile would show in "recompiles"): the ridge outer gradient
   by ``torch.autograd.grad`` and by ``torch.func.grad``, and the iMAML meta-gradient
   (``vmap(grad)`` over 16 tasks).

Every time is ``median [min, max]`` over repeats after warm-up, eager and compiled calls
interleaved; "speed-up" is the ratio of medians from the same run. "compile" is the wall time
of the first call (tracing plus code generation, inductor's caches disabled: cold). "diff" is
the largest difference of the compiled result to the eager one, relative to the eager
result's largest entry; for iMAML both are also compared to a float64 run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import funcimplicit as fi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _imaml
from _timing import Timing, measure_interleaved

TreeFn = Callable[[], Any]


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    problem: str
    eager: Timing
    compiled: Timing | None
    compile_s: float
    diff: str
    note: str = ""


def _leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in _leaves(tree[k])]
    return [t for item in tree for t in _leaves(item)]


def relative_diff(got: Any, want: Any) -> float:
    """``max |got - want| / max |want|`` over all leaves."""
    a = torch.cat([t.detach().double().reshape(-1).cpu() for t in _leaves(got)])
    b = torch.cat([t.detach().double().reshape(-1).cpu() for t in _leaves(want)])
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(
    problem: str,
    eager: TreeFn,
    compiled: TreeFn,
    device: torch.device,
    repeats: int,
    note: str = "",
) -> Row:
    """Compile (first call, timed), check agreement, then time eager and compiled interleaved."""
    start = time.perf_counter()
    out = compiled()
    _sync(device)
    compile_s = time.perf_counter() - start
    diff = relative_diff(out, eager())

    def synced(fn: TreeFn) -> TreeFn:
        return lambda: (fn(), _sync(device))

    t_eager, t_compiled = measure_interleaved(
        [synced(eager), synced(compiled)], repeats=repeats, warmup=1
    )
    return Row(problem, t_eager, t_compiled, compile_s, f"{diff:.1e}", note)


# ----------------------------------------------------------------------------------------------
# 1. Fixed-point solve


def fixed_point_row(device: torch.device, repeats: int) -> Row:
    gen = torch.Generator().manual_seed(0)
    hidden, batch = 128, 32
    w = torch.randn(hidden, hidden, generator=gen)
    w = (0.9 * w / torch.linalg.matrix_norm(w, ord=2)).to(device)
    u = (torch.randn(hidden, 64, generator=gen) / 8).to(device)
    b = (torch.randn(hidden, generator=gen) / 4).to(device)
    x = torch.randn(batch, 64, generator=gen).to(device)
    method = fi.Anderson(maxiter=15, history=5, on_failure="ignore")

    def layer(z: torch.Tensor, w: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> Any:
        return torch.tanh(z @ w.T + x @ u.T + b)

    def solve() -> torch.Tensor:
        z0 = torch.zeros(batch, hidden, device=device)
        return fi.solve_fixed_point(layer, z0, w, u, b, method=method, implicit=False).value

    compiled = torch.compile(solve, fullgraph=True)
    return compare(
        "fixed point: Anderson(maxiter=15), batch 32 x 128", solve, compiled, device, repeats
    )


# ----------------------------------------------------------------------------------------------
# 2. Ridge hypergradient


def _ridge_data(device: torch.device) -> tuple[torch.Tensor, ...]:
    """``X, y, X_val, y_val, lam`` of the ridge problem (d = 100, n = 200), on ``device``."""
    gen = torch.Generator().manual_seed(1)
    d, n = 100, 200
    x, y = torch.randn(n, d, generator=gen), torch.randn(n, generator=gen)
    xv, yv = torch.randn(n, d, generator=gen), torch.randn(n, generator=gen)
    lam = torch.full((d,), 1.0)
    return tuple(t.to(device) for t in (x, y, xv, yv, lam))


def ridge_rows(device: torch.device, repeats: int) -> list[Row]:
    x, y, xv, yv, lam = _ridge_data(device)
    solve = fi.CG(maxiter=20, on_failure="ignore")

    def stationarity(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> Any:
        return x.T @ (x @ w - y) + lam * w

    def val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> torch.Tensor:
        return (xv @ w - yv).square().mean()

    def inner(lam: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)

    def hyper() -> torch.Tensor:
        out: torch.Tensor = fi.hypergradient(
            val_loss, stationarity, inner(lam), lam, x, y, solve=solve
        ).grad
        return out

    @fi.implicit_root(stationarity, argnums=1, solve=solve)
    def ridge(init: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> torch.Tensor:
        return inner(lam)

    def autograd_path() -> torch.Tensor:
        lam_ = lam.clone().requires_grad_()
        loss = val_loss(ridge(lam_, lam_, x, y), lam_, x, y)
        (g,) = torch.autograd.grad(loss, lam_)
        return g

    row = compare(
        "ridge hypergradient, d = 100: fi.hypergradient",
        hyper,
        torch.compile(hyper, fullgraph=True),
        device,
        repeats,
    )
    (t_autograd, t_hyper) = measure_interleaved([autograd_path, hyper], repeats=repeats, warmup=1)
    eager_ref = Row(
        "ridge hypergradient, d = 100: fi.implicit_root + autograd.grad (eager only)",
        t_autograd,
        None,
        float("nan"),
        f"{relative_diff(autograd_path(), hyper()):.1e}",
        f"vs eager fi.hypergradient: {t_autograd.median / t_hyper.median:.2f}x its time",
    )
    return [row, eager_ref]


# ----------------------------------------------------------------------------------------------
# 3. iMAML over 16 tasks


def imaml_rows(device: torch.device, repeats: int, n_tasks: int = 16) -> list[Row]:
    theta = _imaml.init_params(0, device)
    tasks = _imaml.sample_tasks(n_tasks, 1, device)
    theta64 = {k: v.double() for k, v in theta.items()}
    reference = _imaml.meta_gradients_vmap(theta64, tuple(t.double() for t in tasks))  # type: ignore[arg-type]
    compiled = _imaml.compiled_meta_gradients(fullgraph=True)

    def implicit_root_vmap() -> Any:
        return _imaml.meta_gradients_vmap(theta, tasks)

    def hyper_vmap() -> Any:
        return _imaml.hyper_meta_gradients_vmap(theta, tasks)

    def hyper_compiled() -> Any:
        return compiled(theta, tasks)

    label = f"iMAML, {n_tasks} tasks, vmap: compiled fi.hypergradient"
    row = compare(label, implicit_root_vmap, hyper_compiled, device, repeats)
    (t_root, t_hyper) = measure_interleaved(
        [implicit_root_vmap, hyper_vmap], repeats=repeats, warmup=1
    )
    f64 = (
        f"vs float64: eager {relative_diff(implicit_root_vmap(), reference):.1e}, "
        f"compiled {relative_diff(hyper_compiled(), reference):.1e}"
    )
    return [
        Row(row.problem, row.eager, row.compiled, row.compile_s, row.diff, f64),
        Row(
            f"iMAML, {n_tasks} tasks, vmap: eager fi.hypergradient (no compile)",
            t_hyper,
            None,
            float("nan"),
            f"{relative_diff(hyper_vmap(), implicit_root_vmap()):.1e}",
            f"vs eager implicit_root + vmap(grad): {t_hyper.median / t_root.median:.2f}x its time",
        ),
    ]


# ----------------------------------------------------------------------------------------------
# 4. Compiled user code around fi.implicit_root


def _recompiles() -> int:
    return int(sum(torch._dynamo.utils.counters["recompiles"].values()))


def user_code_row(
    problem: str,
    fn: Callable[..., Any],
    fresh: Callable[[], tuple[Any, ...]],
    repeats: int,
    device: torch.device,
    reference: Any = None,
) -> Row:
    """Eager ``fn`` against ``torch.compile(fn)``, each call on new tensors from ``fresh``."""
    compiled = torch.compile(fn)
    inputs = fresh()
    start = time.perf_counter()
    out = compiled(*inputs)
    _sync(device)
    compile_s = time.perf_counter() - start
    want = fn(*inputs)
    diff = f"{relative_diff(out, want):.1e}"
    compiled(*fresh())  # a second call with new tensors: compiles again if guards fail
    before = _recompiles()
    t_eager, t_compiled = measure_interleaved(
        [lambda: (fn(*fresh()), _sync(device)), lambda: (compiled(*fresh()), _sync(device))],
        repeats=repeats,
        warmup=1,
    )
    note = f"recompiles while timing: {_recompiles() - before}"
    if reference is not None:
        note += (
            f"; vs float64: eager {relative_diff(want, reference):.1e}, "
            f"compiled {relative_diff(out, reference):.1e}"
        )
    return Row(problem, t_eager, t_compiled, compile_s, diff, note)


def user_code_rows(device: torch.device, repeats: int, n_tasks: int = 16) -> list[Row]:
    x, y, xv, yv, lam = _ridge_data(device)

    def stationarity(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> Any:
        return x.T @ (x @ w - y) + lam * w

    @fi.implicit_root(stationarity, argnums=1, solve=fi.CG(maxiter=20, on_failure="ignore"))
    def ridge(init: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> torch.Tensor:
        return torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)

    def loss(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        x, y, xv, yv = data
        return (xv @ ridge(lam, lam, x, y) - yv).square().mean()

    def by_autograd(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(loss(lam, *data), lam)
        return g

    def by_func(lam: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.func.grad(loss)(lam, *data)
        return out

    data = (x, y, xv, yv)
    ref = by_func(lam.double(), *(t.double() for t in data))
    rows = [
        user_code_row(
            "ridge, d = 100, compiled user code (fullgraph=False): implicit_root + autograd.grad",
            by_autograd,
            lambda: (lam.clone().requires_grad_(), *data),
            repeats,
            device,
            ref,
        ),
        user_code_row(
            "ridge, d = 100, compiled user code (fullgraph=False): implicit_root + torch.func.grad",
            by_func,
            lambda: (lam.clone(), *data),
            repeats,
            device,
            ref,
        ),
    ]
    theta = _imaml.init_params(0, device)
    tasks = _imaml.sample_tasks(n_tasks, 1, device)
    theta64 = {k: v.double() for k, v in theta.items()}
    reference = _imaml.meta_gradients_vmap(theta64, tuple(t.double() for t in tasks))  # type: ignore[arg-type]
    rows.append(
        user_code_row(
            f"iMAML, {n_tasks} tasks, compiled user code (fullgraph=False): "
            "implicit_root + vmap(grad)",
            _imaml.meta_gradients_vmap,
            lambda: ({k: v.clone() for k, v in theta.items()}, tuple(t.clone() for t in tasks)),
            repeats,
            device,
            reference,
        )
    )
    return rows


# ----------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| problem | eager (ms) | compiled (ms) | speed-up | compile (s) | diff | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        compiled = r.compiled.show("ms") if r.compiled else "-"
        speedup = f"{r.eager.median / r.compiled.median:.1f}x" if r.compiled else "-"
        compile_s = f"{r.compile_s:.0f}" if r.compiled else "-"
        lines.append(
            f"| {r.problem} | {r.eager.show('ms')} | {compiled} | {speedup} | {compile_s} "
            f"| {r.diff} | {r.note} |"
        )
    return "\n".join(lines)


def header(device: torch.device, quick: bool) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return (
        "# torch.compile vs eager\n\n"
        f"- {where}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"funcimplicit {fi.__version__}; inductor backend, fullgraph=True, cold compiles"
        + (" (--quick)" if quick else "")
        + "\n- time: median [min, max] per call after warm-up; eager and compiled interleaved"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="iMAML only, fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--only", choices=["user"], help="user: the compiled-user-code rows only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Compile times are cold: inductor's on-disk caches would turn a rerun's compile into a
    # cache lookup (seconds instead of minutes).
    torch._inductor.config.force_disable_caches = True
    device = torch.device(args.device)
    repeats = 5 if args.quick else 20
    print(header(device, args.quick) + "\n")
    rows: list[Row] = []
    steps: list[Callable[[], list[Row]]] = [lambda: imaml_rows(device, repeats)]
    if args.only == "user":
        steps = [lambda: user_code_rows(device, repeats)]
    elif not args.quick:
        steps = [
            lambda: [fixed_point_row(device, repeats)],
            lambda: ridge_rows(device, repeats),
            *steps,
            lambda: user_code_rows(device, repeats),
        ]
    for step in steps:
        torch._dynamo.reset()
        rows.extend(step())
        print(f"  ... {rows[-1].problem} done", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
