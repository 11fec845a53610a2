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

A second table compares the inner methods of issue 19 on hypergradients (the gradient of an
outer loss through the solution), each with the same algorithm, tolerance and implicit
linear solver on both sides:

- L-BFGS (memory 10) on an L2 logistic regression, n = 200, d = 20 (JAXopt's LBFGS searches
  with its default zoom line search; funcimplicit backtracks on Armijo);
- Gauss-Newton (no line search) and Levenberg-Marquardt on an exponential fit with noise
  (a non-zero residual problem), gradient of the fitted rate in the 30 data points;
- projected gradient (fixed step 1/L, no acceleration) on a box-constrained quadratic,
  d = 50, gradient in the upper bounds.

Columns: eager funcimplicit, compiled funcimplicit (``torch.compile(fullgraph=True)`` of
the forward solve at a static trip count, the eager run's, followed by
``fi.hypergradient``; its line searches run their full ``max_backtracks`` since nothing is
read on the host), JAXopt under ``jax.jit(jax.grad(...))``. ``--quick`` skips the compiled
column (each compile takes minutes). Without JAX and JAXopt installed the funcimplicit
columns still run and the JAXopt columns say so.
"""

from __future__ import annotations

import os

# One thread for XLA as for torch (set before JAX is imported).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import _imaml as im
import numpy as np
import torch
from _timing import Timing, measure_interleaved
from compiled import relative_diff
from implicit import Ridge, fi_compiled_ridge, ridge_closed_form

import funcimplicit as fi

try:  # optional: without JAX the funcimplicit side still runs
    import jax
    import jax.numpy as jnp
    import jaxopt
except ImportError:
    jax = jnp = jaxopt = None

HAVE_JAX = jaxopt is not None
if HAVE_JAX:
    jax.config.update("jax_enable_x64", True)
REPEATS = 60
ABSENT = "JAX absent"


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


# ------------------------------------------------------------------ inner methods (issue 19)

TOL = 1e-10  # gradient-norm tolerance of every inner solve, both sides
F64 = torch.float64


class SolverProblem:
    """One row: the funcimplicit hypergradient, eager and compiled, and JAXopt's, jitted."""

    def __init__(
        self,
        name: str,
        fi_eager: Callable[[], torch.Tensor],
        fi_compiled: Callable[[int], Callable[[], torch.Tensor]],
        fi_iterations: Callable[[], int],
        jax_fn: Callable[[], Callable[[], Any]],
        reference: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.name, self.fi_eager, self.fi_compiled = name, fi_eager, fi_compiled
        self.fi_iterations, self.jax_fn, self.reference = fi_iterations, jax_fn, reference


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stationarity(objective: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    def T(x: Any, *args: Any) -> Any:
        return torch.func.grad(objective)(x, *args)

    return T


def _hyper_compiled(
    solve_fn: Callable[..., torch.Tensor],
    optimality: Callable[..., Any],
    outer: Callable[..., torch.Tensor],
    argnum: int,
    args: tuple[torch.Tensor, ...],
    cg_steps: int,
    linear: type = fi.CG,
) -> Callable[[], torch.Tensor]:
    """Compile ``solve_fn(*args)`` (no derivatives) + ``fi.hypergradient`` as one graph."""
    solve = linear(maxiter=cg_steps, on_failure="ignore")

    def hyper(*args: torch.Tensor) -> torch.Tensor:
        x = solve_fn(*args)
        grad: torch.Tensor = fi.hypergradient(
            outer, optimality, x, *args, argnums=argnum, solve=solve
        ).grad
        return grad

    compiled = torch.compile(hyper, fullgraph=True, dynamic=False)
    return lambda: compiled(*args)


def lbfgs_problem() -> SolverProblem:
    n, d = 200, 20
    X = torch.randn(n, d, dtype=F64, generator=_gen(0))
    w_true = torch.randn(d, dtype=F64, generator=_gen(1))
    y = (torch.rand(n, dtype=F64, generator=_gen(2)) < torch.sigmoid(X @ w_true)).to(F64)
    Xv = torch.randn(50, d, dtype=F64, generator=_gen(3))
    yv = (Xv @ w_true > 0).to(F64)
    lam = torch.tensor(1.0, dtype=F64)

    def loss(w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> Any:
        data = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y, reduction="sum")
        return data + 0.5 * lam * (w**2).sum()

    def outer(w: torch.Tensor, *_: Any) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w, yv)

    method = fi.LBFGS(memory=10, rtol=TOL, atol=TOL)
    w0 = torch.zeros(d, dtype=F64)

    def eager() -> torch.Tensor:
        lam_ = lam.clone().requires_grad_()
        w = fi.minimize(loss, w0, lam_, X, y, method=method).value
        return torch.autograd.grad(outer(w), lam_)[0]

    def iterations() -> int:
        return int(fi.minimize(loss, w0, lam, X, y, method=method).iterations)

    def compiled(k: int) -> Callable[[], torch.Tensor]:
        static = fi.LBFGS(memory=10, maxiter=k, max_backtracks=8, on_failure="ignore")

        def solve(lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fi.minimize(loss, w0, lam, X, y, method=static, implicit=False).value

        return _hyper_compiled(solve, stationarity(loss), outer, 1, (lam, X, y), 2 * d)

    def jaxopt_fn() -> Callable[[], Any]:
        Xj, yj, Xvj, yvj = (to_jax(t) for t in (X, y, Xv, yv))

        def jloss(w: Any, lam: Any, X: Any, y: Any) -> Any:
            z = X @ w
            data = jnp.sum(jnp.logaddexp(0.0, z) - y * z)
            return data + 0.5 * lam * jnp.sum(w**2)

        solver = jaxopt.LBFGS(
            fun=jloss,
            history_size=10,
            tol=TOL,
            maxiter=500,
            implicit_diff_solve=functools.partial(jaxopt.linear_solve.solve_cg, tol=TOL),
        )

        def jouter(lam: Any) -> Any:
            w = solver.run(jnp.zeros(d), lam, Xj, yj).params
            z = Xvj @ w
            return jnp.mean(jnp.logaddexp(0.0, z) - yvj * z)

        return blocked(functools.partial(jax.jit(jax.grad(jouter)), to_jax(lam)))

    return SolverProblem(
        "L-BFGS, logistic n = 200, d = 20: d val / d lam", eager, compiled, iterations, jaxopt_fn
    )


def _exp_fit_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.linspace(0, 2, 30, dtype=F64)
    y = 2.0 * torch.exp(-1.3 * t) + 0.5 + 0.1 * torch.randn(30, dtype=F64, generator=_gen(4))
    return t, y, torch.tensor([1.0, -1.0, 0.0], dtype=F64)


def exp_residual(p: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return p[0] * torch.exp(p[1] * t) + p[2] - y


def least_squares_problem(lm: bool) -> SolverProblem:
    t, y, p0 = _exp_fit_data()
    solve = fi.CG(maxiter=3, on_failure="ignore")  # 3 unknowns: exact in 3 steps
    method: fi.InnerMethod = (
        fi.LevenbergMarquardt(rtol=TOL, atol=TOL, solve=solve)
        if lm
        else fi.GaussNewton(rtol=TOL, atol=TOL, solve=solve, backtracking=False)
    )

    def outer(p: torch.Tensor, *_: Any) -> torch.Tensor:
        return p[1]

    def eager() -> torch.Tensor:
        y_ = y.clone().requires_grad_()
        p = fi.least_squares(exp_residual, p0, t, y_, method=method).value
        return torch.autograd.grad(outer(p), y_)[0]

    def iterations() -> int:
        return int(fi.least_squares(exp_residual, p0, t, y, method=method).iterations)

    def sum_of_squares(p: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (exp_residual(p, t, y) ** 2).sum()

    def compiled(k: int) -> Callable[[], torch.Tensor]:
        static = (
            fi.LevenbergMarquardt(maxiter=k, solve=solve, on_failure="ignore")
            if lm
            else fi.GaussNewton(maxiter=k, solve=solve, backtracking=False, on_failure="ignore")
        )

        def run(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fi.least_squares(exp_residual, p0, t, y, method=static, implicit=False).value

        return _hyper_compiled(run, stationarity(sum_of_squares), outer, 2, (t, y), 3)

    def jaxopt_fn() -> Callable[[], Any]:
        tj, yj, p0j = to_jax(t), to_jax(y), to_jax(p0)

        def jres(p: Any, t: Any, y: Any) -> Any:
            return p[0] * jnp.exp(p[1] * t) + p[2] - y

        cg = functools.partial(jaxopt.linear_solve.solve_cg, tol=TOL)
        if lm:
            solver = jaxopt.LevenbergMarquardt(
                residual_fun=jres,
                tol=TOL,
                xtol=0.0,
                gtol=0.0,
                maxiter=100,
                implicit_diff_solve=cg,
            )
        else:
            solver = jaxopt.GaussNewton(
                residual_fun=jres, tol=TOL, maxiter=100, implicit_diff_solve=cg
            )

        def jouter(y: Any) -> Any:
            return solver.run(p0j, tj, y).params[1]

        return blocked(functools.partial(jax.jit(jax.grad(jouter)), yj))

    name = "Levenberg-Marquardt" if lm else "Gauss-Newton"
    return SolverProblem(
        f"{name}, exp fit, 30 points: d rate / d data", eager, compiled, iterations, jaxopt_fn
    )


def projected_problem() -> SolverProblem:
    d = 50
    A = torch.randn(d, d, dtype=F64, generator=_gen(5))
    Q = torch.eye(d, dtype=F64) + 0.25 * (A @ A.T) / d
    c = torch.randn(d, dtype=F64, generator=_gen(6))
    lo = torch.full((d,), -0.5, dtype=F64)
    hi = torch.full((d,), 0.5, dtype=F64)
    step = 1.0 / float(torch.linalg.eigvalsh(Q)[-1])
    v = torch.randn(d, dtype=F64, generator=_gen(7))

    def quadratic(x: torch.Tensor, c: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
        return 0.5 * x @ Q @ x + c @ x

    def box(x: torch.Tensor, c: Any, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return fi.projections.box(x, lo, hi)

    def outer(x: torch.Tensor, *_: Any) -> torch.Tensor:
        return v @ x

    method = fi.ProjectedGradient(projection=box, step_size=step, rtol=TOL, atol=TOL)
    x0 = torch.zeros(d, dtype=F64)

    def eager() -> torch.Tensor:
        hi_ = hi.clone().requires_grad_()
        x = fi.minimize(quadratic, x0, c, lo, hi_, method=method).value
        return torch.autograd.grad(outer(x), hi_)[0]

    def iterations() -> int:
        return int(fi.minimize(quadratic, x0, c, lo, hi, method=method).iterations)

    def compiled(k: int) -> Callable[[], torch.Tensor]:
        static = fi.ProjectedGradient(
            projection=box, step_size=step, maxiter=k, on_failure="ignore"
        )

        def solve(c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
            return fi.minimize(quadratic, x0, c, lo, hi, method=static, implicit=False).value

        mapping = fi.ProjectedGradient(projection=box, step_size=step).optimality(quadratic)
        assert mapping is not None
        return _hyper_compiled(solve, mapping, outer, 3, (c, lo, hi), 2 * d, fi.GMRES)

    def jaxopt_fn() -> Callable[[], Any]:
        Qj, cj, loj, hij, vj = (to_jax(x) for x in (Q, c, lo, hi, v))

        def jquad(x: Any, c: Any) -> Any:
            return 0.5 * x @ Qj @ x + c @ x

        solver = jaxopt.ProjectedGradient(
            fun=jquad,
            projection=jaxopt.projection.projection_box,
            stepsize=step,
            tol=TOL,
            maxiter=2000,
            acceleration=False,
            implicit_diff_solve=functools.partial(jaxopt.linear_solve.solve_gmres, tol=TOL),
        )

        def jouter(hi: Any) -> Any:
            return vj @ solver.run(jnp.zeros(d), (loj, hi), cj).params

        return blocked(functools.partial(jax.jit(jax.grad(jouter)), hij))

    def reference() -> torch.Tensor:
        """With the active set read off a tight solve: coordinates at the upper bound follow
        it, free ones solve Q_ff dx_f = -Q_fa dx_a, so d(v.x)/d hi_a = v_a - Q_af Q_ff^-1 v_f."""
        tight = fi.ProjectedGradient(
            projection=box, step_size=step, rtol=1e-14, atol=1e-14, maxiter=20000
        )
        x = fi.minimize(quadratic, x0, c, lo, hi, method=tight, implicit=False).value
        up = (x - hi).abs() < 1e-9
        free = ~up & ((x - lo).abs() >= 1e-9)
        out = torch.zeros(d, dtype=F64)
        out[up] = v[up] - Q[free][:, up].T @ torch.linalg.solve(Q[free][:, free], v[free])
        return out

    return SolverProblem(
        "projected gradient, box QP, d = 50: d (v . x*) / d upper",
        eager,
        compiled,
        iterations,
        jaxopt_fn,
        reference,
    )


def solver_rows(quick: bool, repeats: int) -> list[list[str]]:
    rows = []
    for problem in (
        lbfgs_problem(),
        least_squares_problem(lm=False),
        least_squares_problem(lm=True),
        projected_problem(),
    ):
        eager_out = problem.fi_eager()
        k = problem.fi_iterations()
        fns: list[Callable[[], Any]] = [problem.fi_eager]
        compiled_note, jax_note, agreement = "skipped (--quick)", ABSENT, []
        compiled_out: Any = None
        if problem.reference is not None:
            want = problem.reference()
            agreement.append(f"{relative_diff(eager_out, want):.1e} fi vs active-set solve")
        if not quick:
            compiled_fn = problem.fi_compiled(k)
            compiled_out, compile_s = first_call_s(compiled_fn)
            fns.append(compiled_fn)
            agreement.append(f"{relative_diff(compiled_out, eager_out):.1e} compiled vs eager")
        jax_out: Any = None
        if HAVE_JAX:
            jax_fn = problem.jax_fn()
            jax_out, jax_first = first_call_s(jax_fn)
            fns.append(jax_fn)
            jax_torch = torch.from_numpy(np.array(jax_out))
            agreement.append(f"{relative_diff(eager_out, jax_torch):.1e} fi vs JAXopt")
            if problem.reference is not None:
                agreement.append(f"{relative_diff(jax_torch, want):.1e} JAXopt vs active-set solve")
        timings: list[Timing] = measure_interleaved(fns, repeats=repeats, warmup=2)
        t_eager = timings[0]
        t_compiled = timings[1] if not quick else None
        t_jax = timings[-1] if HAVE_JAX else None
        if t_compiled is not None:
            compiled_note = f"{t_compiled.show('ms')} ({compile_s:.0f} s first call)"
        if t_jax is not None:
            jax_note = f"{t_jax.show('ms')} ({jax_first:.1f} s first call)"
        ratio = (
            f"**{t_eager.median / t_jax.median:.2f}**"
            + (f" / **{t_compiled.median / t_jax.median:.2f}**" if t_compiled else "")
            if t_jax is not None
            else "-"
        )
        rows.append(
            [
                problem.name,
                str(k),
                t_eager.show("ms"),
                compiled_note,
                jax_note,
                ratio,
                "; ".join(agreement) or "-",
            ]
        )
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def peer_rows() -> list[list[str]]:
    """The ridge and iMAML hypergradients: compiled funcimplicit against JAXopt's jit."""
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
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="no compiled funcimplicit, fewer repeats"
    )
    parser.add_argument(
        "--solvers-only", action="store_true", help="only the inner-method table (issue 19)"
    )
    options = parser.parse_args()
    torch.set_num_threads(1)
    jax_version = jax.__version__ if HAVE_JAX else "not installed"
    print(f"- torch {torch.__version__} (inductor, 1 thread); jax {jax_version} (1 thread)")
    print("- median [min, max] per call, the timed calls interleaved call by call\n")

    if not HAVE_JAX:
        print(
            "JAX and JAXopt are not installed (see this script's docstring): the ridge and "
            "iMAML comparisons need them and are skipped; the inner-method table below runs "
            "the funcimplicit side alone.\n"
        )
    elif not options.solvers_only and not options.quick:
        header = [
            "problem",
            "fi compiled ms",
            "JAXopt jit ms",
            "fi / JAXopt",
            "first call s (fi / JAXopt)",
            "agreement",
        ]
        print_table(header, peer_rows())
        print()

    header = [
        "inner method, hypergradient",
        "fi iterations",
        "fi eager ms",
        "fi compiled ms",
        "JAXopt jit ms",
        "fi / JAXopt (eager / compiled)",
        "agreement (relative)",
    ]
    print_table(header, solver_rows(options.quick, 10 if options.quick else REPEATS))


if __name__ == "__main__":
    main()
