"""Distributed iMAML: the meta-batch of ``imaml_digits.py`` sharded over processes.

The problem, the model and the per-task meta-gradient are those of ``examples/imaml_digits.py``
(5-way 5-shot few-shot classification of scikit-learn's digits, an MLP 64-64-5 whose parameters
``theta`` are the meta-learned initialization, inner gradient descent with the implicit
meta-gradient of ``fi.implicit_root``, ``vmap(grad(meta_loss))`` over tasks). What is new is how
a meta-batch of ``B`` tasks is shared by ``W`` processes (``torch.distributed``):

- every rank draws the same meta-batch (same seed, same generator), then keeps its own slice
  ``S_r`` of it (disjoint slices that cover the batch);
- each rank computes its tasks' meta-gradients ``g_i`` with ``vmap(grad(meta_loss))`` and sums
  them into one flat buffer ``[sum_{i in S_r} g_i, sum_{i in S_r} loss_i]``;
- one ``all_reduce`` (sum) per meta-step adds the buffers of all ranks, and every rank divides
  by ``B``: ``g = (1/B) sum_r sum_{i in S_r} g_i = (1/B) sum_i g_i``, the single-process
  meta-gradient summed in another order (equal up to float rounding), and the same bits on
  every rank;
- every rank then takes the same Adam step from the same ``theta`` (broadcast once at the start),
  so the ranks never need to exchange ``theta`` again.

Evaluation is sharded the same way (each rank adapts to a slice of the episodes; one
``all_reduce`` per checkpoint adds the accuracy sums). A benchmark then times meta-gradients per
second with one process (rank 0 alone, the others wait at a barrier) and with all ``W``, on the
same meta-batches, and checks that the distributed meta-gradient equals the one-process one.

Backend: NCCL on ``cuda:LOCAL_RANK`` when CUDA is available, gloo on the CPU otherwise. Without
``torchrun`` the script runs as one process (a one-rank group on a free loopback port).

Run::

    python examples/distributed_imaml.py [--quick] [--out DIR] [--threads N] [--reps N]
    torchrun --nproc_per_node=2 examples/distributed_imaml.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from _common import Progress, Timer, parse_args, result_record, savefig, seed_everything
from imaml_digits import (
    Config,
    Episodes,
    Params,
    adapted_accuracy,
    init_params,
    load_pools,
    make_meta_gradients,
    sample_episodes,
)
from torch import Tensor

SHOT = 5


# ----------------------------------------------------------------------------- process group


@dataclass(frozen=True)
class Rank:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world: int
    device: torch.device

    def log(self, message: str) -> None:
        """Print on rank 0 only (the other ranks compute the same numbers)."""
        if self.rank == 0:
            print(message, flush=True)


def setup() -> Rank:
    """Join the process group that ``torchrun`` describes, or make a one-process group.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; without them the script is one process, in a group of one.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    device_id = device if cuda else None
    if "WORLD_SIZE" in os.environ:  # launched by torchrun: the env:// rendezvous
        dist.init_process_group(backend, device_id=device_id)
    else:  # one process: a one-rank group on a free loopback port
        dist.init_process_group(
            backend, init_method="tcp://127.0.0.1:0", rank=0, world_size=1, device_id=device_id
        )
    return Rank(dist.get_rank(), dist.get_world_size(), device)


def flatten(tree: Params) -> Tensor:
    """All leaves of ``tree``, flattened and concatenated in key order."""
    return torch.cat([t.reshape(-1) for t in tree.values()])


def unflatten(flat: Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`: split ``flat`` into tensors shaped like ``like``."""
    sizes = [t.numel() for t in like.values()]
    parts = torch.split(flat, sizes)
    return {k: p.view_as(t) for (k, t), p in zip(like.items(), parts, strict=True)}


def to_device(batch: Episodes, device: torch.device) -> Episodes:
    """A batch of episodes moved to ``device``."""
    xs, ys, xq, yq = (e.to(device) for e in batch)
    return xs, ys, xq, yq


def shard(batch: Episodes, r: Rank) -> Episodes:
    """This rank's slice of a batch of episodes (contiguous, disjoint, covering the batch)."""
    xs, ys, xq, yq = (e.tensor_split(r.world)[r.rank] for e in batch)
    return to_device((xs, ys, xq, yq), r.device)


# ----------------------------------------------------------------------------- meta-gradient


class MetaGradient:
    """The mean meta-gradient of a meta-batch, computed by all ranks together.

    Each rank runs ``vmap(grad(meta_loss))`` (``imaml_digits.make_meta_gradients``) on its slice
    of the batch; one ``all_reduce`` of a flat buffer of ``P + 1`` numbers (``P`` parameters and
    the query loss) per call.
    """

    def __init__(self, cfg: Config, r: Rank) -> None:
        self.per_task = make_meta_gradients(cfg)["iMAML"]
        self.rank = r

    def local(self, theta: Params, tasks: Episodes) -> tuple[Params, Tensor]:
        """Per-task meta-gradients and query losses of ``tasks``, on this rank only."""
        return self.per_task(theta, *tasks)

    def __call__(self, theta: Params, batch: Episodes) -> tuple[Params, float]:
        """``(1/B) sum_i g_i`` and ``(1/B) sum_i loss_i`` over the ``B`` tasks of ``batch``."""
        grads, losses = self.local(theta, shard(batch, self.rank))
        # buffer_r = [sum_{i in S_r} g_i, sum_{i in S_r} loss_i];  sum_r buffer_r = sum over B.
        buffer = torch.cat([flatten({k: g.sum(0) for k, g in grads.items()}), losses.sum()[None]])
        dist.all_reduce(buffer)  # the one communication of a meta-step
        buffer /= len(batch[0])
        return unflatten(buffer[:-1], theta), float(buffer[-1])


def sharded_accuracy(
    theta: Params, lam: float, episodes: list[Episodes], cfg: Config, r: Rank
) -> list[tuple[float, float]]:
    """Mean query accuracy (%) and 95 % half-width per episode set, each rank adapting a slice.

    One ``all_reduce`` of ``[sum a, sum a^2]`` per set gives the mean and the sample variance
    ``(sum a^2 - n mean^2) / (n - 1)`` of the per-episode accuracies ``a`` over all ranks.
    """
    sums = []
    for eps in episodes:
        acc = adapted_accuracy(theta, lam, shard(eps, r), cfg)
        sums += [acc.sum(), (acc**2).sum()]
    buffer = torch.stack(sums).double()
    dist.all_reduce(buffer)
    out = []
    for (total, squares), eps in zip(buffer.view(-1, 2).tolist(), episodes, strict=True):
        n = len(eps[0])
        mean = total / n
        std = math.sqrt(max(squares - n * mean**2, 0.0) / (n - 1))
        out.append((100 * mean, 100 * 1.96 * std / math.sqrt(n)))
    return out


# ----------------------------------------------------------------------------- training


@dataclass
class History:
    iters: list[int]
    loss: list[float]  # mean query loss of each meta-batch (all ranks)
    novel: list[float]  # accuracy on novel classes at checkpoints
    base: list[float]  # accuracy on new images of base classes at checkpoints


def meta_train(
    cfg: Config,
    pools: tuple[list[Tensor], list[Tensor], list[Tensor]],
    seed: int,
    r: Rank,
    meta_gradient: MetaGradient,
) -> tuple[Params, History]:
    """Meta-train ``theta`` with Adam on the all-reduced meta-gradient (identical on all ranks).

    Seeds and episode order are those of ``imaml_digits.meta_train`` (iMAML, 5-shot); runs with
    different numbers of processes differ only by the rounding of the sum over tasks.
    """
    base_train, base_val, novel = pools
    gen = torch.Generator().manual_seed(seed)  # the same stream on every rank
    theta = {k: v.to(r.device) for k, v in init_params(gen).items()}
    flat = flatten(theta)
    dist.broadcast(flat, src=0)  # equal already (same seed); the broadcast makes it a rule
    theta = {k: v.clone().requires_grad_() for k, v in unflatten(flat, theta).items()}
    opt = torch.optim.Adam(list(theta.values()), lr=cfg.meta_lr)
    checks = [
        sample_episodes(base_val, cfg.eval_episodes, SHOT, torch.Generator().manual_seed(seed + 1)),
        sample_episodes(novel, cfg.eval_episodes, SHOT, torch.Generator().manual_seed(seed + 2)),
    ]
    hist = History([], [], [], [])
    progress = Progress(total=cfg.meta_iters + 1, every=cfg.eval_every)
    for it in range(cfg.meta_iters + 1):
        if it % cfg.eval_every == 0 or it == cfg.meta_iters:
            frozen = {k: v.detach() for k, v in theta.items()}
            (base_acc, _), (novel_acc, _) = sharded_accuracy(frozen, cfg.lam, checks, cfg, r)
            hist.iters.append(it)
            hist.base.append(base_acc)
            hist.novel.append(novel_acc)
            recent = hist.loss[-cfg.eval_every :] or [float("nan")]
            if r.rank == 0:
                progress(
                    it,
                    query_loss=sum(recent) / len(recent),
                    base_acc=base_acc,
                    novel_acc=novel_acc,
                )
        if it == cfg.meta_iters:
            break
        batch = sample_episodes(base_train, cfg.meta_batch, SHOT, gen)
        grads, loss = meta_gradient({k: v.detach() for k, v in theta.items()}, batch)
        for k, v in theta.items():
            v.grad = grads[k]
        torch.nn.utils.clip_grad_norm_(list(theta.values()), cfg.clip)
        opt.step()
        hist.loss.append(loss)
    return {k: v.detach() for k, v in theta.items()}, hist


def theta_spread(theta: Params) -> float:
    """``max_r max |theta_r - theta_0|`` over the ranks: 0 when every rank holds the same."""
    flat = flatten(theta)
    first = flat.clone()
    dist.broadcast(first, src=0)
    spread = (flat - first).abs().max()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


# ----------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class Throughput:
    one: float  # meta-gradients (tasks) per second, rank 0 alone
    all: float  # with all ranks and the all_reduce
    gap: float  # max |g_distributed - g_one| / max |g_one| on the first batch


def synchronize_device(r: Rank) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)


def synchronize(r: Rank) -> None:
    """Wait for the device's queued work, then for every rank."""
    synchronize_device(r)
    dist.barrier()


def benchmark(
    theta: Params, pool: list[Tensor], cfg: Config, r: Rank, meta_gradient: MetaGradient, reps: int
) -> Throughput:
    """Meta-gradients per second: rank 0 alone on whole batches, then every rank on its slice.

    Both time the same ``reps`` meta-batches of ``cfg.meta_batch`` tasks after one warm-up
    batch; while rank 0 works alone the other ranks wait at a barrier.
    """
    gen = torch.Generator().manual_seed(12345)
    batches = [sample_episodes(pool, cfg.meta_batch, SHOT, gen) for _ in range(reps + 1)]
    one_rate, reference = 0.0, torch.zeros(())
    synchronize(r)
    if r.rank == 0:
        full = [to_device(b, r.device) for b in batches]
        meta_gradient.local(theta, full[0])  # warm-up
        with Timer() as t:
            for batch in full[1:]:
                meta_gradient.local(theta, batch)
            synchronize_device(r)
        one_rate = reps * cfg.meta_batch / t.seconds
        grads, _ = meta_gradient.local(theta, full[1])
        reference = flatten({k: g.mean(0) for k, g in grads.items()})
    synchronize(r)
    meta_gradient(theta, batches[0])  # warm-up
    synchronize(r)
    with Timer() as t:
        for batch in batches[1:]:
            meta_gradient(theta, batch)
        synchronize(r)
    all_rate = reps * cfg.meta_batch / t.seconds
    distributed = flatten(meta_gradient(theta, batches[1])[0])
    gap = 0.0
    if r.rank == 0:
        gap = float((distributed - reference).abs().max() / reference.abs().max())
    return Throughput(one_rate, all_rate, gap)


# ----------------------------------------------------------------------------- main


def plot(hist: History, speed: Throughput, r: Rank, threads: int, args: argparse.Namespace) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(range(1, len(hist.loss) + 1), hist.loss, color="tab:blue", lw=0.8)
    ax.set_title(f"mean query loss of each meta-batch ({r.world} process(es))")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(hist.iters, hist.novel, "-o", ms=3, color="tab:blue", label="novel digits 5-9")
    ax.plot(hist.iters, hist.base, "--", color="tab:blue", label="base classes, new images")
    ax.set_title(f"5-way {SHOT}-shot query accuracy during meta-training")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax = axes[2]
    labels = ["1 process"] + ([f"{r.world} processes"] if r.world > 1 else [])
    rates = [speed.one] + ([speed.all] if r.world > 1 else [])
    bars = ax.bar(labels, rates, color=["tab:gray", "tab:green"][: len(rates)])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_title(f"meta-gradients per second ({threads} thread(s) per process)")
    ax.set_ylabel("tasks / s")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    savefig(fig, args.out, "distributed_imaml.png")


def run(args: argparse.Namespace, r: Rank) -> None:
    seed_everything(args.seed)
    cfg = Config()
    reps = 20
    if args.quick:
        cfg = Config(meta_iters=20, eval_every=10, eval_episodes=100, test_episodes=200)
        reps = 3
    reps = args.reps or reps
    if r.world > cfg.meta_batch:
        raise SystemExit(
            f"{r.world} processes for {cfg.meta_batch} tasks per meta-batch: "
            "use at most as many processes as tasks"
        )
    pools = load_pools(args.seed)
    base_train, base_val, novel = pools
    threads = torch.get_num_threads()
    per_rank = [len(s) for s in torch.arange(cfg.meta_batch).tensor_split(r.world)]
    like = init_params(torch.Generator())
    n_params = sum(t.numel() for t in like.values())
    nbytes = (n_params + 1) * like["w1"].element_size()  # the buffer of MetaGradient.__call__
    r.log(
        f"{r.world} process(es), backend {dist.get_backend()}, device {r.device}, "
        f"{threads} intra-op thread(s) each; meta-batch of {cfg.meta_batch} tasks split "
        f"{' + '.join(map(str, per_rank))}"
    )
    r.log(
        f"per meta-step every rank all-reduces one buffer of {n_params} + 1 floats "
        f"(meta-gradient + query loss): {nbytes} bytes"
    )
    meta_gradient = MetaGradient(cfg, r)
    r.log(f"-- iMAML, 5-way {SHOT}-shot: {cfg.meta_iters} meta-iterations")
    with Timer() as train:
        theta, hist = meta_train(cfg, pools, args.seed, r, meta_gradient)
    r.log(f"   {train.seconds / cfg.meta_iters * 1000:.1f} ms per meta-iteration")
    spread = theta_spread(theta)
    r.log(f"   theta after training: max difference between ranks {spread:.1e}")

    initial = {
        k: v.to(r.device) for k, v in init_params(torch.Generator().manual_seed(args.seed)).items()
    }
    tests = [
        sample_episodes(
            novel, cfg.test_episodes, SHOT, torch.Generator().manual_seed(args.seed + 4)
        ),
        sample_episodes(
            base_val, cfg.test_episodes, SHOT, torch.Generator().manual_seed(args.seed + 5)
        ),
    ]
    (n0, _), (b0, _) = sharded_accuracy(initial, cfg.lam, tests, cfg, r)
    (n1, n1_ci), (b1, b1_ci) = sharded_accuracy(theta, cfg.lam, tests, cfg, r)
    r.log(f"-- evaluation on {cfg.test_episodes} test episodes (95 % CI), sharded over the ranks")
    for name, before, (after, ci) in (
        ("novel digits 5-9", n0, (n1, n1_ci)),
        ("base classes, new images", b0, (b1, b1_ci)),
    ):
        r.log(f"   {name:<25} no meta-training {before:5.1f} %, iMAML {after:5.1f} +- {ci:.1f} %")
    r.log(f"-- throughput: {reps} meta-batches of {cfg.meta_batch} tasks, {threads} thread(s) each")
    speed = benchmark(theta, base_train, cfg, r, meta_gradient, reps)
    if r.rank == 0:  # rank 0 timed both runs and holds the reference meta-gradient
        report(args, r, cfg, hist, speed, threads, nbytes, spread, (n0, n1, n1_ci, b0, b1))


def report(
    args: argparse.Namespace,
    r: Rank,
    cfg: Config,
    hist: History,
    speed: Throughput,
    threads: int,
    nbytes: int,
    spread: float,
    accuracy: tuple[float, float, float, float, float],
) -> None:
    """Rank 0: print the throughput, save the plot, the summary and the ``RESULT:`` line."""
    n0, n1, n1_ci, b0, b1 = accuracy
    print(f"   1 process:    {speed.one:7.1f} meta-gradients/s")
    rates = f"1 process {speed.one:.0f}"
    if r.world > 1:
        print(
            f"   {r.world} processes:  {speed.all:7.1f} meta-gradients/s "
            f"({speed.all / speed.one:.2f}x one process)"
        )
        rates += f", {r.world} processes {speed.all:.0f}"
    print(
        f"   distributed vs one-process meta-gradient of the same batch: max difference "
        f"{speed.gap:.1e} relative to its largest entry (float32 rounding of the sum order)"
    )
    plot(hist, speed, r, threads, args)
    print(
        f"summary: iMAML 5-way {SHOT}-shot on {r.world} process(es): novel digits "
        f"{n1:.1f}+-{n1_ci:.1f} % (no meta-training {n0:.1f} %), base classes' new images "
        f"{b1:.1f} % ({b0:.1f} %) after {cfg.meta_iters} meta-iterations; "
        f"meta-gradients/s: {rates} ({threads} thread(s) each); "
        f"distributed = one-process meta-gradient to {speed.gap:.0e}; ranks' theta differ by "
        f"{spread:.0e}; {nbytes} bytes all-reduced per step",
        flush=True,
    )
    record = result_record(  # what meta-training buys on novel classes
        "novel_digits_5shot_accuracy_percent",
        method=n1,
        baseline=n0,
        higher_is_better=True,
        seeds=1,
    )
    print(f"RESULT: {json.dumps(record)}", flush=True)


def main(args: argparse.Namespace) -> None:
    r = setup()
    try:
        run(args, r)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    description = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="meta-batches timed by the throughput benchmark (default: 20; 3 with --quick)",
    )
    main(parse_args(description, parser=parser, default_threads=1))
