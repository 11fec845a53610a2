"""The rows of the "fast by default" targets for this checkout and an earlier commit, side by
side in one process (every pair of calls interleaved).

    PYTHONPATH=. python benchmarks/before_after.py                  # against 88e3fe2
    PYTHONPATH=. python benchmarks/before_after.py --before <rev> --quick --out DIR

The earlier commit is extracted with ``git archive`` into a temporary folder and imported as
``funcimplicit_before`` (the package imports itself only relatively), so both versions run in
the same interpreter on the same tensors. The default ``88e3fe2`` is the last commit before
the issues "derivatives through user code", "one shape for every solver" and "fast by
default" were worked on. Only APIs both versions have are used (the default solve,
``fi.CG``, ``fi.GMRES``, ``fi.FixedPointIteration``, ``implicit_root``, ``solve_fixed_point``);
an option the earlier version lacks (``check_every``) is marked ``-``.

Rows (times are medians over interleaved repeats, float64, one thread):

1. ridge hypergradient d = 100 (n = 200), inner dense solve, each library's *default*
   backward solve, forward + backward; TorchOpt's default (``solve_normal_cg``) when
   installed; error against the closed form.
2. bare CG on an SPD system (d = 500, condition 1e3, rtol 1e-10): TorchOpt's
   ``torchopt.linalg.cg`` time / funcimplicit's.
3. CG (n = 2000) and GMRES (n = 500) against their matvec floor: solve time / (iterations x
   the median of one bare ``A @ v``).
4. ``torch.compile`` of the user's own function (the ridge hypergradient of row 1 with
   ``solve=fi.CG(maxiter=100)``, which converges here): eager / compiled, and how many new
   graphs dynamo made in the timed calls (0: no recompilation).
   The same for the iMAML meta-gradient over 16 sine-wave tasks (``vmap(grad)`` of the
   user's per-task loss around ``implicit_root``, ``CG(maxiter=10)``; ``_imaml.py``).
   Also the ridge gradient of row 4 by ``torch.func.grad`` instead of ``autograd.grad``,
   eager, each version's time (the backward solve runs beneath the transform's wrappers).
5. ``vmap`` over 32 affine contractions (n = 100) with radii 0.1 ... 0.99 by
   ``FixedPointIteration``: vmap time / the slowest problem alone.
6. host reads (``bool``, ``int``, ``float``, ``item``, ``tolist`` of a tensor: each a
   synchronization on a GPU) per CG iteration at n = 200, with ``check_every`` 1 and ``None``.

Prints one markdown table; ``--out`` also writes it to ``DIR/before_after.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import funcimplicit as fi

F64 = torch.float64
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BEFORE = "88e3fe2"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _imaml, next to this file


def load_version(rev: str, into: Path) -> types.ModuleType:
    """The package at ``rev``, imported as ``funcimplicit_before``."""
    archive = subprocess.run(
        ["git", "archive", rev, "funcimplicit"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    tar_path = into / "before.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    name = "funcimplicit_before"
    spec = importlib.util.spec_from_file_location(
        name,
        into / "funcimplicit" / "__init__.py",
        submodule_search_locations=[str(into / "funcimplicit")],
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def interleaved(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median seconds of each of ``fns``, called in turn ``repeats`` times after a warm-up."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd(n: int, cond: float, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=_gen(seed)))
    eig = torch.logspace(0.0, math.log10(cond), n, dtype=F64)
    a = (q * eig) @ q.mT
    return (a + a.mT) / 2


def nonsymmetric(n: int, seed: int) -> torch.Tensor:
    g = torch.randn(n, n, dtype=F64, generator=_gen(seed))
    return torch.eye(n, dtype=F64) * 2 + 0.5 * g / math.sqrt(n)


# --------------------------------------------------------------------------------------------
# Row 1: the ridge hypergradient with each default solve


class Ridge:
    def __init__(self, d: int = 100, n: int = 200, seed: int = 0) -> None:
        g = _gen(seed)
        self.X = torch.randn(n, d, dtype=F64, generator=g)
        self.y = torch.randn(n, dtype=F64, generator=g)
        self.Xv = torch.randn(n, d, dtype=F64, generator=g)
        self.yv = torch.randn(n, dtype=F64, generator=g)
        self.lam = torch.full((d,), 1.0, dtype=F64)

    @staticmethod
    def optimality(
        theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        return X.T @ (X @ theta - y) + lam * theta

    @staticmethod
    def inner(
        init: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.solve(X.T @ X + torch.diag(lam), X.T @ y)
        return out

    def closed_form(self) -> torch.Tensor:
        a = self.X.T @ self.X + torch.diag(self.lam)
        theta = torch.linalg.solve(a, self.X.T @ self.y)
        g = self.Xv.T @ (self.Xv @ theta - self.yv)
        return -torch.linalg.solve(a, g) * theta

    def cg_loss(self, v: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """``lam -> 0.5 ||Xv theta*(lam) - yv||^2`` by version ``v``'s ``implicit_root`` with
        ``CG(maxiter=100)`` (which converges here) as the backward solve."""
        solver = v.implicit_root(Ridge.optimality, argnums=3, solve=v.CG(maxiter=100))(Ridge.inner)

        def loss(lam: torch.Tensor) -> torch.Tensor:
            theta = solver(torch.zeros_like(lam), self.X, self.y, lam)
            return 0.5 * (self.Xv @ theta - self.yv).pow(2).sum()

        return loss

    def hypergradient(self, solver: Callable[..., torch.Tensor]) -> torch.Tensor:
        lam = self.lam.clone().requires_grad_(True)
        theta = solver(torch.zeros_like(lam), self.X, self.y, lam)
        loss = 0.5 * (self.Xv @ theta - self.yv).pow(2).sum()
        (g,) = torch.autograd.grad(loss, lam)
        return g


def _torchopt() -> Any | None:
    try:
        import torchopt

        return torchopt
    except ImportError:
        return None


def row_ridge(versions: dict[str, Any], repeats: int) -> list[str]:
    p = Ridge()
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for label, v in versions.items():
        solver = v.implicit_root(Ridge.optimality, argnums=3)(Ridge.inner)
        fns[label] = lambda s=solver: p.hypergradient(s)
    to = _torchopt()
    if to is not None:
        root = to.diff.implicit.custom_root(
            lambda theta, lam, X, y: Ridge.optimality(theta, X, y, lam), argnums=1
        )(lambda init, lam, X, y: Ridge.inner(init, X, y, lam))
        fns["TorchOpt"] = lambda: p.hypergradient(lambda i, X, y, lam: root(i, lam, X, y))
    times = dict(zip(fns, interleaved(list(fns.values()), repeats), strict=True))
    ref = p.closed_form()
    errors = {k: float((fn() - ref).abs().max() / ref.abs().max()) for k, fn in fns.items()}
    cells = [f"{times[k] * 1e3:.2f} ms (err {errors[k]:.0e})" for k in versions]
    if "TorchOpt" in times:
        ratios = " / ".join(f"{times['TorchOpt'] / times[k]:.1f}x" for k in versions)
        cells = [
            f"{c}; TorchOpt/fi {times['TorchOpt'] / times[k]:.1f}x"
            for c, k in zip(cells, versions, strict=True)
        ]
        del ratios
    return ["ridge d=100, default solve, fwd+bwd (TorchOpt/fi ≥ 5x)", *cells]


# --------------------------------------------------------------------------------------------
# Rows 2-3: bare Krylov solves


def row_bare_cg(versions: dict[str, Any], repeats: int) -> list[str]:
    n = 500
    a, b = spd(n, 1e3, 1), torch.randn(n, dtype=F64, generator=_gen(2))
    fns = {
        k: (lambda v=v: v.CG(rtol=1e-10, atol=0.0, maxiter=2000).run(lambda x: a @ x, b))
        for k, v in versions.items()
    }
    to = _torchopt()
    cells: list[str] = []
    if to is None:
        return [
            "bare CG d=500, TorchOpt/fi (≥ 1.0x)",
            *(["TorchOpt not installed"] * len(versions)),
        ]
    fns["TorchOpt"] = lambda: to.linalg.cg(lambda x: a @ x, b, rtol=1e-10, atol=0.0, maxiter=2000)
    times = dict(zip(fns, interleaved(list(fns.values()), repeats), strict=True))
    for k in versions:
        cells.append(f"{times['TorchOpt'] / times[k]:.2f}x ({times[k] * 1e3:.2f} ms)")
    return [
        f"bare CG d=500, TorchOpt/fi (≥ 1.0x; TorchOpt {times['TorchOpt'] * 1e3:.2f} ms)",
        *cells,
    ]


def row_floor(versions: dict[str, Any], repeats: int, kind: str) -> list[str]:
    n = 2000 if kind == "CG" else 500
    a = spd(n, 1e3, 3) if kind == "CG" else nonsymmetric(n, 3)
    b = torch.randn(n, dtype=F64, generator=_gen(4))
    fns: dict[str, Callable[[], Any]] = {}
    for k, v in versions.items():
        solver = (
            v.CG(rtol=1e-10, atol=0.0, maxiter=5000)
            if kind == "CG"
            else v.GMRES(rtol=1e-10, atol=0.0, maxiter=500, restart=50)
        )
        fns[k] = lambda s=solver: s.run(lambda x: a @ x, b)
    x = torch.randn(n, dtype=F64, generator=_gen(5))
    fns["matvec"] = lambda: a @ x
    times = dict(zip(fns, interleaved(list(fns.values()), repeats), strict=True))
    cells = []
    for k in versions:
        its = int(fns[k]().iterations)
        cells.append(f"{times[k] / (its * times['matvec']):.2f}x ({its} its)")
    target = "≤ 1.2x" if kind == "CG" else "≤ 3x"
    return [f"{kind} n={n} / matvec floor ({target})", *cells]


# --------------------------------------------------------------------------------------------
# Row 4: torch.compile of the user's function


def row_compiled(versions: dict[str, Any], repeats: int) -> list[str]:
    import torch._dynamo

    p = Ridge()
    cells = []
    for v in versions.values():
        loss = p.cg_loss(v)

        def user(lam: torch.Tensor, loss: Any = loss) -> torch.Tensor:
            (g,) = torch.autograd.grad(loss(lam), lam)
            return g

        torch._dynamo.reset()
        compiled = torch.compile(user)

        def eager(u: Any = user) -> torch.Tensor:
            return u(p.lam.clone().requires_grad_(True))

        def comp(c: Any = compiled) -> torch.Tensor:
            return c(p.lam.clone().requires_grad_(True))

        ratio, graphs, diff = _compiled_ratio(eager, comp, repeats)
        cells.append(f"{ratio:.2f}x (new graphs in {repeats + 1} calls: {graphs}; diff {diff:.0e})")
    return ["compiled user code, ridge: eager/compiled (≥ 3x)", *cells]


def _compiled_ratio(
    user: Callable[[], Any], compiled: Callable[[], Any], repeats: int
) -> tuple[float, int, float]:
    """eager / compiled time, the new graphs dynamo made while timing, and their difference."""
    from torch._dynamo.utils import counters

    compiled()  # the compile, outside the timing
    before = int(counters["stats"]["unique_graphs"])
    t_eager, t_comp = interleaved([user, compiled], repeats)
    graphs = int(counters["stats"]["unique_graphs"]) - before
    pairs = zip(_leaves(compiled()), _leaves(user()), strict=True)
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in pairs)
    return t_eager / t_comp, graphs, diff


def _leaves(out: Any) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else [out]


def row_compiled_imaml(versions: dict[str, Any], repeats: int) -> list[str]:
    import _imaml
    import torch._dynamo

    theta = _imaml.init_params(0)
    tasks = _imaml.sample_tasks(16, 1)
    cells = []
    for v in versions.values():
        solve = v.CG(maxiter=_imaml.CG_STEPS, on_failure="ignore")
        adapted = v.implicit_root(_imaml.optimality, argnums=1, solve=solve)(
            lambda init, theta, xs, ys: _imaml.inner_solve(theta, xs, ys)
        )

        def per_task(theta: Any, xs: Any, ys: Any, xq: Any, yq: Any, a: Any = adapted) -> Any:
            return torch.func.grad(lambda t: _imaml.meta_loss(a(t, t, xs, ys), xq, yq))(theta)

        def user(f: Any = per_task) -> Any:
            grads = torch.func.vmap(f, in_dims=(None, 0, 0, 0, 0))(theta, *tasks)
            return {k: g.mean(0) for k, g in grads.items()}

        torch._dynamo.reset()
        compiled = torch.compile(user)
        ratio, graphs, diff = _compiled_ratio(user, compiled, repeats)
        cells.append(f"{ratio:.2f}x (new graphs in {repeats + 1} calls: {graphs}; diff {diff:.0e})")
    return ["compiled user code, iMAML 16 tasks vmap(grad): eager/compiled (≥ 3x)", *cells]


def row_func_grad(versions: dict[str, Any], repeats: int) -> list[str]:
    p = Ridge()
    fns = []
    for v in versions.values():
        loss = p.cg_loss(v)
        fns.append(lambda f=loss: torch.func.grad(f)(p.lam))
    times = interleaved(fns, repeats)
    err = float((fns[-1]() - p.closed_form()).abs().max())
    cells = [f"{t * 1e3:.2f} ms" for t in times]
    cells[-1] += f" ({times[0] / times[-1]:.2f}x faster; err {err:.0e})"
    return ["ridge d=100 by torch.func.grad, CG(maxiter=100), eager fwd+bwd", *cells]


# --------------------------------------------------------------------------------------------
# Row 5: vmap over uneven problems


def row_uneven(versions: dict[str, Any], repeats: int) -> list[str]:
    n, count = 100, 32
    radii = torch.linspace(0.1, 0.99, count, dtype=F64)
    g = torch.randn(count, n, n, dtype=F64, generator=_gen(6))
    g = (g + g.mT) / 2
    js = g / torch.linalg.matrix_norm(g, ord=2)[:, None, None] * radii[:, None, None]
    cs = torch.randn(count, n, dtype=F64, generator=_gen(7))

    def F(x: torch.Tensor, j: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return j @ x + c

    cells = []
    for v in versions.values():
        method = v.FixedPointIteration(maxiter=5000, on_failure="ignore")

        def one(j: torch.Tensor, c: torch.Tensor, m: Any = method, vv: Any = v) -> Any:
            return vv.solve_fixed_point(
                F, torch.zeros(n, dtype=F64), j, c, method=m, implicit=False
            )

        batch = lambda o=one: torch.func.vmap(o)(js, cs)  # noqa: E731
        slowest = lambda o=one: o(js[-1], cs[-1])  # noqa: E731
        t_batch, t_slow = interleaved([batch, slowest], max(3, repeats // 4))
        cells.append(f"{t_batch / t_slow:.1f}x ({t_batch * 1e3:.0f} / {t_slow * 1e3:.0f} ms)")
    return ["vmap 32 uneven contractions / slowest alone (≤ 1.5x)", *cells]


# --------------------------------------------------------------------------------------------
# Row 6: host synchronizations per iteration


class _CountSyncs:
    """Counts the host reads of tensors inside the block: ``bool``, ``int``, ``float``,
    ``item`` and ``tolist`` of a tensor (each one a synchronization on a GPU)."""

    NAMES = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")

    def __init__(self) -> None:
        self.count = 0
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> _CountSyncs:
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            self.saved[name] = original

            def counted(tensor: torch.Tensor, *a: Any, _f: Any = original, **k: Any) -> Any:
                self.count += 1
                return _f(tensor, *a, **k)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)


def row_syncs(versions: dict[str, Any]) -> list[str]:
    n = 200
    a, b = spd(n, 1e3, 8), torch.randn(n, dtype=F64, generator=_gen(9))
    cells = []
    for v in versions.values():
        parts = []
        for every in (1, None):
            try:
                solver = v.CG(rtol=1e-10, atol=0.0, maxiter=1000, check_every=every)
            except TypeError:
                parts.append("-")
                continue
            with _CountSyncs() as mode:
                result = solver.run(lambda x: a @ x, b)
            parts.append(f"{mode.count / int(result.iterations):.2f}")
        cells.append(" / ".join(parts))
    return ["host syncs per CG iteration, check_every 1 / None (an option for 0)", *cells]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the earlier git revision")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no compile row")
    parser.add_argument("--out", type=Path, default=None, help="folder for before_after.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 5 if args.quick else 21
    with tempfile.TemporaryDirectory() as tmp:
        before = load_version(args.before, Path(tmp))
        versions = {f"before ({args.before})": before, "after (this checkout)": fi}
        rows: list[list[str]] = []
        steps: list[Callable[[], list[str]]] = [
            lambda: row_ridge(versions, repeats),
            lambda: row_bare_cg(versions, repeats),
            lambda: row_floor(versions, repeats, "CG"),
            lambda: row_floor(versions, repeats, "GMRES"),
            lambda: row_func_grad(versions, repeats),
            lambda: row_uneven(versions, repeats),
            lambda: row_syncs(versions),
        ]
        if not args.quick:
            # few repeats: the earlier version recompiles on every call (about a minute each)
            steps.insert(4, lambda: row_compiled(versions, 4))
            steps.insert(5, lambda: row_compiled_imaml(versions, 3))
        for step in steps:
            rows.append(step())
            print(f"  done: {rows[-1][0]}", file=sys.stderr, flush=True)
    header = ["row (target)", *versions]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "before_after.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
