"""torch.distributed: meta-gradients sharded over processes equal the single-process ones.

Two gloo processes on this machine (rendezvous on ``127.0.0.1``, a free port; started with
``multiprocessing``'s spawn and killed after ``TIMEOUT_S``) each take half of the tasks of a
tiny iMAML problem (linear regression adapted by a proximal ridge fit, ``fi.implicit_root`` with
``fi.CG``, float64) and compute

- ``vmap(grad(meta_loss))`` over their shard, summed, then ``all_reduce`` (sum) and divided by the
  number of tasks: the mean meta-gradient;
- ``DistributedDataParallel`` over a module whose parameters are the meta-parameters, with the
  mean meta-loss of the shard and classic ``.backward()`` (DDP averages the ranks' gradients).

This process computes the mean meta-gradient over all tasks alone and compares. The last test runs
``examples/distributed_imaml.py`` under ``torchrun`` with two processes.

Tolerance: ``rtol=1e-10``. The per-task computations are the same on both sides; what differs is
the order of the float64 sum over tasks (shard sums, then across ranks, vs one sum over all
tasks) and the vmap batch size (3 vs 6 tasks), which can change the rounding of batched kernels.
Both are of order ``1e-16`` relative; a missing, duplicated or misweighted task changes the result
at order ``1e-1`` (the shard sums are checked to differ by that much).
"""

from __future__ import annotations

import gc
import multiprocessing
import re
import socket
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from scripts import run_example
from torch import Tensor

import funcimplicit as fi

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # the two processes take a few seconds; this only stops a hang
EXAMPLE_TIMEOUT_S = 300  # the --quick example takes about 10 s on 2 cores
WORLD = 2
TASKS, DIM, SUPPORT, QUERY = 6, 5, 8, 10
LAM = 0.5  # proximal strength of the inner problem
F64 = torch.float64

Params = dict[str, Tensor]
Tasks = tuple[Tensor, Tensor, Tensor, Tensor]  # support x, support y, query x, query y


# ----------------------------------------------------------------------------- the tiny problem


def predict(p: Params, x: Tensor) -> Tensor:
    return x @ p["w"] + p["b"]


def inner_objective(phi: Params, theta: Params, xs: Tensor, ys: Tensor) -> Tensor:
    """``0.5 mean (x phi - y)^2 + lam/2 ||phi - theta||^2`` on the support set."""
    prox = sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
    return 0.5 * ((predict(phi, xs) - ys) ** 2).mean() + 0.5 * LAM * prox


def stationarity(phi: Params, theta: Params, xs: Tensor, ys: Tensor) -> Params:
    """Gradient of the inner objective in ``phi``: zero at ``phi*(theta)``."""
    grad: Params = torch.func.grad(inner_objective)(phi, theta, xs, ys)
    return grad


def ridge(init: Params, theta: Params, xs: Tensor, ys: Tensor) -> Params:
    """The exact inner solution ``(X^T X / n + lam I) p = X^T y / n + lam theta``, ``X = [x 1]``."""
    x = torch.cat([xs, torch.ones_like(xs[:, :1])], 1)
    n, d = x.shape
    rhs = x.T @ ys / n + LAM * torch.cat([theta["w"], theta["b"][None]])
    p = torch.linalg.solve(x.T @ x / n + LAM * torch.eye(d, dtype=x.dtype), rhs)
    return {"w": p[:-1], "b": p[-1]}


adapt = fi.implicit_root(stationarity, argnums=1, solve=fi.CG())(ridge)


def meta_loss(theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
    """Query mean squared error of the parameters adapted to the support set."""
    phi = adapt(theta, theta, xs, ys)  # init = theta; argnums=1: d/dtheta only
    return ((predict(phi, xq) - yq) ** 2).mean()


per_task_meta_gradients = torch.func.vmap(torch.func.grad(meta_loss), in_dims=(None, 0, 0, 0, 0))


def make_tasks() -> Tasks:
    """``TASKS`` regression tasks ``y = tanh(x . w_task) + noise``, each its own ``w_task``."""
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    w = torch.randn(TASKS, DIM, generator=gen, dtype=F64)
    x = torch.randn(TASKS, SUPPORT + QUERY, DIM, generator=gen, dtype=F64)
    noise = 0.1 * torch.randn(TASKS, SUPPORT + QUERY, generator=gen, dtype=F64)
    y = torch.tanh(torch.einsum("mnd,md->mn", x, w)) + noise
    return x[:, :SUPPORT], y[:, :SUPPORT], x[:, SUPPORT:], y[:, SUPPORT:]


def initial_theta() -> Params:
    return {"w": torch.linspace(-1.0, 1.0, DIM, dtype=F64), "b": torch.tensor(0.3, dtype=F64)}


def flatten(tree: Params) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tree.values()])


def shard_indices(rank: int, world: int) -> Tensor:
    """Contiguous, disjoint slices of the task indices that cover them."""
    return torch.arange(TASKS).tensor_split(world)[rank]


class MetaInit(torch.nn.Module):
    """The meta-parameters ``theta`` as a module, for DistributedDataParallel."""

    def __init__(self, theta: Params) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(theta["w"].clone())
        self.b = torch.nn.Parameter(theta["b"].clone())

    def forward(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        """Mean meta-loss over the given tasks, by classic autograd (a loop, no vmap)."""
        theta: Params = {"w": self.w, "b": self.b}
        losses = [meta_loss(theta, xs[i], ys[i], xq[i], yq[i]) for i in range(len(xs))]
        return torch.stack(losses).mean()


# ----------------------------------------------------------------------------- the processes


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: its shard's meta-gradient sum, all-reduced, and DDP's gradient; saved to disk."""
    warnings.simplefilter("error")  # as strict as the test run (pytest's filterwarnings=error)
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=TIMEOUT_S / 2),  # a lost peer fails a collective, not hangs
    )
    try:
        index = shard_indices(rank, world)
        xs, ys, xq, yq = (t[index] for t in make_tasks())
        theta = initial_theta()

        # all_reduce: (1/B) sum_r sum_{i in shard r} g_i = (1/B) sum_i g_i.
        local = flatten(
            {k: g.sum(0) for k, g in per_task_meta_gradients(theta, xs, ys, xq, yq).items()}
        )
        total = local.clone()
        dist.all_reduce(total)
        mean = total / TASKS

        # DDP: each rank's loss is the mean over its shard; DDP averages the gradients over the
        # ranks, which with equal shards is the mean over all tasks.
        model = torch.nn.parallel.DistributedDataParallel(MetaInit(theta))
        model(xs, ys, xq, yq).backward()
        parts = []
        for name, p in model.module.named_parameters():
            if p.grad is None:
                raise RuntimeError(f"DDP's backward left {name} without a gradient")
            parts.append(p.grad.reshape(-1))
        ddp = torch.cat(parts)
        # Free DDP's reducer while the group lives: on torch 2.13 + gloo, a DistributedDataParallel
        # still alive after destroy_process_group hung the process at exit in about 1 run in 5
        # (measured: 0 hangs in 40 runs with this del, a hang within 6 runs without it).
        del model
        gc.collect()

        torch.save({"index": index, "local": local, "mean": mean, "ddp": ddp}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A port free on the loopback interface now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Tensor]]:
    """Run the ``WORLD`` processes once and load what each saved."""
    out = tmp_path_factory.mktemp("ranks")
    port = free_port()
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    processes = [
        spawn.Process(target=_worker, args=(rank, WORLD, port, str(out))) for rank in range(WORLD)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + TIMEOUT_S
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"ranks {hung} did not finish within {TIMEOUT_S} s"
    codes = [process.exitcode for process in processes]
    assert codes == [0] * WORLD, f"exit codes {codes} (tracebacks in the captured stderr)"
    return [torch.load(out / f"{rank}.pt") for rank in range(WORLD)]


@pytest.fixture(scope="module")
def reference() -> Tensor:
    """The mean meta-gradient over all tasks, in this one process."""
    grads = per_task_meta_gradients(initial_theta(), *make_tasks())
    return flatten({k: g.mean(0) for k, g in grads.items()})


# ----------------------------------------------------------------------------- tests


def test_shards_are_disjoint_and_cover_the_tasks(ranks: list[dict[str, Tensor]]) -> None:
    indices = torch.cat([r["index"] for r in ranks])
    assert sorted(indices.tolist()) == list(range(TASKS))


def test_all_reduced_shard_sums_equal_the_single_process_meta_gradient(
    ranks: list[dict[str, Tensor]], reference: Tensor
) -> None:
    # The shards really differ: a rank that saw every task (or none) would be caught.
    local0, local1 = ranks[0]["local"], ranks[1]["local"]
    assert (local0 - local1).abs().max() > 0.1 * reference.abs().max()
    for r in ranks:
        torch.testing.assert_close(r["mean"], reference, rtol=1e-10, atol=0.0)
    # All ranks hold the same bits, so identical optimizer steps keep theta identical.
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"])


def test_ddp_backward_equals_the_single_process_meta_gradient(
    ranks: list[dict[str, Tensor]], reference: Tensor
) -> None:
    for r in ranks:
        torch.testing.assert_close(r["ddp"], reference, rtol=1e-10, atol=0.0)
    assert torch.equal(ranks[0]["ddp"], ranks[1]["ddp"])


def test_example_runs_under_torchrun(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    script = ROOT / "examples" / "distributed_imaml.py"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        "--quick",
        "--out",
        str(tmp_path),
    ]
    lines, report = run_example(command, cwd=ROOT, timeout_s=EXAMPLE_TIMEOUT_S)
    summary = next((line for line in lines if line.startswith("summary:")), "")
    assert f"on {WORLD} process(es)" in summary, report
    # float32: the sum over tasks in another order moves the last bits only.
    gap = re.search(r"distributed = one-process meta-gradient to (\S+);", summary)
    assert gap is not None, report
    assert float(gap.group(1)) < 1e-5, report
    assert "ranks' theta differ by 0e+00" in summary, report
    png = tmp_path / "distributed_imaml.png"
    assert png.is_file(), report
    assert png.stat().st_size > 0, report
