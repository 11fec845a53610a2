"""How far compiled funcimplicit is from a JAX-jitted peer (JAXopt), on the same problems.

Not part of ``run.py`` and never of the tests: it needs JAX and JAXopt, which funcimplicit
does not depend on. Install them beside torch in a separate environment, then run from the
repository root:

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install torch==2.13.0 jax jaxopt optree
    /tmp/jaxenv/bin/pip install -e . --no-deps
    PYTHONPATH=. /tmp/jaxenv/bin/python benchmarks/jaxopt_peer.py

Both problems use the same data (made by torch, handed to JAX as numpy arrays), one CPU
thread on each side, and the same algorithm:

- ridge hypergradient, d = 100, float64: inner ``linalg.solve``, backward CG to rtol 1e-10
  (JAXopt: ``custom_root`` + ``solve_cg``, stopping on the residual; funcimplicit:
  ``fi.hypergradient`` compiled with ``fullgraph=True``, CG at a static 37 iterations, the
  count the eager solve takes);
- iMAML meta-gradient, 16 sine tasks, MLP 1-40-40-1, 20 inner steps, 10 CG steps, float32
  (``jit(vmap(grad))`` against ``torch.compile(vmap(fi.hypergradient))``).

Prints a Markdown table: per-call medians, timed call by call in turn, the ratio, compile
times and the agreement of the two results.
"""

from __future__ import annotations

import os

# One thread for XLA as for torch (set before JAX is imported).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import functools
import time
from collections.abc import Callable
from typing import Any

import _imaml as im
import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import torch
from _timing import measure_interleaved
from compiled import relative_diff
from implicit import Ridge, fi_compiled_ridge, ridge_closed_form

jax.config.update("jax_enable_x64", True)
REPEATS = 60


def to_jax(t: torch.Tensor) -> jax.Array:
    return jnp.asarray(t.detach().cpu().numpy())


def to_torch(tree: dict[str, jax.Array]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in tree.items()}


def blocked(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` that waits for JAX's asynchronous result (a fair clock)."""
    return lambda: jax.block_until_ready(fn())


def first_call_s(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- ridge


def jax_ridge(p: Ridge) -> Callable[[], jax.Array]:
    """JAXopt's hypergradient of the ridge problem, jitted."""
    X, y, Xv, yv, lam = (to_jax(t) for t in (p.X, p.y, p.Xv, p.yv, p.lam))

    def optimality(theta: jax.Array, lam: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
        return X.T @ (X @ theta - y) + lam * theta

    solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=1e-10)

    @jaxopt.implicit_diff.custom_root(optimality, solve=solve)
    def inner(init: jax.Array, lam: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.linalg.solve(X.T @ X + jnp.diag(lam), X.T @ y)

    def outer(lam: jax.Array) -> jax.Array:
        theta = inner(jnp.zeros_like(lam), lam, X, y)
        return 0.5 * jnp.sum((Xv @ theta - yv) ** 2)

    hyper = jax.jit(jax.grad(outer))
    return blocked(lambda: hyper(lam))


# ----------------------------------------------------------------------------- iMAML


def jax_imaml(theta_t: im.Params, tasks_t: im.Tasks) -> Callable[[], dict[str, jax.Array]]:
    """The benchmark's iMAML meta-gradient (see ``_imaml.py``) in JAX + JAXopt, jitted."""
    theta = {k: to_jax(v) for k, v in theta_t.items()}
    tasks = tuple(to_jax(t) for t in tasks_t)

    def net(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = jnp.tanh(x @ p["w1"].T + p["b1"])
        h = jnp.tanh(h @ p["w2"].T + p["b2"])
        return h @ p["w3"].T + p["b3"]

    def inner_loss(phi: Any, theta: Any, xs: jax.Array, ys: jax.Array) -> jax.Array:
        prox = sum(jnp.sum((phi[k] - theta[k]) ** 2) for k in phi)
        return jnp.mean((net(phi, xs) - ys) ** 2) + 0.5 * im.LAM * prox

    optimality = jax.grad(inner_loss)
    solve = functools.partial(jaxopt.linear_solve.solve_cg, maxiter=im.CG_STEPS, tol=0.0)

    @jaxopt.implicit_diff.custom_root(optimality, solve=solve)
    def adapted(init: Any, theta: Any, xs: jax.Array, ys: jax.Array) -> Any:
        phi = dict(theta)
        for _ in range(im.INNER_STEPS):
            g = optimality(phi, theta, xs, ys)
            phi = {k: phi[k] - im.INNER_LR * g[k] for k in phi}
        return phi

    def task_loss(theta: Any, xs: jax.Array, ys: jax.Array, xq: jax.Array, yq: jax.Array) -> Any:
        phi = adapted(theta, theta, xs, ys)
        return jnp.mean((net(phi, xq) - yq) ** 2)

    per_task = jax.vmap(jax.grad(task_loss), in_axes=(None, 0, 0, 0, 0))

    @jax.jit
    def mean_meta_gradient(theta: Any, *tasks: jax.Array) -> Any:
        return {k: v.mean(0) for k, v in per_task(theta, *tasks).items()}

    return blocked(lambda: mean_meta_gradient(theta, *tasks))


# ----------------------------------------------------------------------------- table


def main() -> None:
    torch.set_num_threads(1)
    rows = []

    p = Ridge.make(100)
    reference = ridge_closed_form(p, p.lam)
    fi_fn = fi_compiled_ridge(p, 37)
    jx_fn = jax_ridge(p)
    fi_out, fi_compile = first_call_s(fi_fn)
    jx_out, jx_compile = first_call_s(jx_fn)
    t_fi, t_jx = measure_interleaved([fi_fn, jx_fn], repeats=REPEATS, warmup=3)
    errors = [
        float((fi_out - reference).abs().max()),
        float(np.abs(np.asarray(jx_out) - reference.numpy()).max()),
    ]
    rows.append(
        [
            "ridge hypergradient, d = 100, float64",
            t_fi.show("ms"),
            t_jx.show("ms"),
            f"**{t_fi.median / t_jx.median:.2f}**",
            f"{fi_compile:.0f} / {jx_compile:.1f}",
            f"{errors[0]:.1e} / {errors[1]:.1e} (vs closed form)",
        ]
    )

    theta = im.init_params(0)
    tasks = im.sample_tasks(16, 1)
    compiled = im.compiled_meta_gradients(fullgraph=True)
    fi_fn2 = functools.partial(compiled, theta, tasks)
    jx_fn2 = jax_imaml(theta, tasks)
    fi_out2, fi_compile2 = first_call_s(fi_fn2)
    jx_out2, jx_compile2 = first_call_s(jx_fn2)
    t_fi2, t_jx2 = measure_interleaved([fi_fn2, jx_fn2], repeats=REPEATS, warmup=3)
    rows.append(
        [
            "iMAML, 16 tasks, vmap, float32",
            t_fi2.show("ms"),
            t_jx2.show("ms"),
            f"**{t_fi2.median / t_jx2.median:.2f}**",
            f"{fi_compile2:.0f} / {jx_compile2:.1f}",
            f"{relative_diff(to_torch(jx_out2), fi_out2):.1e} (relative, JAXopt vs fi)",
        ]
    )

    header = [
        "problem",
        "fi compiled ms",
        "JAXopt jit ms",
        "fi / JAXopt",
        "first call s (fi / JAXopt)",
        "agreement",
    ]
    print(f"- torch {torch.__version__} (inductor, 1 thread); jax {jax.__version__} (1 thread)")
    print("- median [min, max] per call, the two timed call by call in turn\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
