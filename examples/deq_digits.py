"""A deep-equilibrium classifier on handwritten digits: Anderson forward, implicit backward.

Data: scikit-learn's digits (1797 images of 8x8 pixels, ships with scikit-learn, no download),
stratified 75 / 25 train / test split, pixels standardized with training statistics.

Model: the hidden state is the fixed point of one layer,
    z* = tanh(W z* + U x + b),      logits = R z* + c,
with ``W = gamma V / max(1, ||V||_2)`` (exact spectral norm, ``gamma = 0.9``): ``tanh`` is
1-Lipschitz, so the layer is a contraction with constant <= gamma for every ``V`` and the
equilibrium exists and is unique. The cell ``F(z, x)`` is an ``nn.Module`` holding ``V``, ``U``
and ``b``, passed as it is to ``fi.solve_fixed_point(cell, z0, x, method=fi.Anderson())`` under
``torch.func.vmap`` (every image stops when it converges); its parameters get their implicit
gradients in ``loss.backward()``. The backward pass is implicit, one GMRES solve with
``I - dF/dz`` per batch, so training memory does not depend on how many Anderson iterations
the forward pass took.

Compared with the unrolled equivalent: the same Anderson iterations (``implicit=False``), with
autograd recording every one of them. Both train from the same initialization on the same
batches. Memory is the bytes saved for backward by one training step's forward pass, counted
with ``torch.autograd.graph.saved_tensors_hooks`` (each saved storage counted once).

Run: ``python examples/deq_digits.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from _common import Progress, SavedBytes, parse_args, result_record, savefig, seed_everything
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import funcimplicit as fi

Params = dict[str, Tensor]
HIDDEN, GAMMA, BATCH = 64, 0.9, 128


def load_data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test), standardized with training statistics."""
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    mean, std = x_tr.mean(0), x_tr.std(0) + 0.1  # + 0.1: some border pixels are always 0
    return (x_tr - mean) / std, torch.tensor(y_tr), (x_te - mean) / std, torch.tensor(y_te)


def init_params(gen: torch.Generator) -> Params:
    return {
        "V": torch.randn(HIDDEN, HIDDEN, generator=gen) / math.sqrt(HIDDEN),
        "U": torch.randn(HIDDEN, 64, generator=gen) / math.sqrt(64),
        "b": torch.zeros(HIDDEN),
        "R": torch.randn(10, HIDDEN, generator=gen) / math.sqrt(HIDDEN),
        "c": torch.zeros(10),
    }


def contractive(v: Tensor) -> Tensor:
    """``gamma V / max(1, ||V||_2)``: spectral norm at most ``gamma < 1``."""
    return GAMMA * v / torch.clamp(torch.linalg.matrix_norm(v, ord=2), min=1.0)


class Cell(nn.Module):
    """The fixed-point map ``F(z, x) = tanh(W z + U x + b)`` for one image."""

    def __init__(self, p: Params) -> None:
        super().__init__()
        self.V = nn.Parameter(p["V"])
        self.U = nn.Parameter(p["U"])
        self.b = nn.Parameter(p["b"])

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(contractive(self.V) @ z + self.U @ x + self.b)


class DEQClassifier(nn.Module):
    """``logits = R z* + c`` with ``z* = F(z*, x)``."""

    def __init__(self, p: Params) -> None:
        super().__init__()
        self.cell = Cell(p)
        self.head = nn.Linear(HIDDEN, 10)
        with torch.no_grad():
            self.head.weight.copy_(p["R"])
            self.head.bias.copy_(p["c"])


def forward(
    model: DEQClassifier, x: Tensor, method: fi.Anderson, implicit: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, Anderson iterations, converged) for a batch; one equilibrium per image."""

    def equilibrium(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sol = fi.solve_fixed_point(
            model.cell,
            torch.zeros(HIDDEN),
            image,
            method=method,
            solve=fi.GMRES(),
            implicit=implicit,
        )
        return sol.value, sol.iterations, sol.converged

    z, iterations, converged = torch.func.vmap(equilibrium)(x)
    return model.head(z), iterations, converged


def step_memory(
    model: DEQClassifier, x: Tensor, y: Tensor, method: fi.Anderson, implicit: bool
) -> tuple[int, float, Tensor]:
    """One training step's (bytes saved for backward by its forward pass, mean iterations,
    flat parameter gradient)."""
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        logits, iterations, _ = forward(model, x, method, implicit)
        loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    flat = torch.cat([g.flatten() for g in grads])
    return saved.total, float(iterations.float().mean()), flat


@dataclass
class Run:
    name: str
    loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    test_acc: list[float] = field(default_factory=list)  # per epoch
    step_seconds: list[float] = field(default_factory=list)
    iterations: list[Tensor] = field(default_factory=list)  # per training image, all epochs
    converged: list[Tensor] = field(default_factory=list)


def train(
    name: str,
    implicit: bool,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    epochs: int,
    method: fi.Anderson,
    seed: int,
) -> tuple[DEQClassifier, Run]:
    x_tr, y_tr, x_te, y_te = data
    model = DEQClassifier(init_params(torch.Generator().manual_seed(seed)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed + 1)  # the same batches for every model
    run = Run(name)
    progress = Progress(total=epochs, every=max(1, epochs // 6))
    print(f"-- {name}: {epochs} epochs, batch {BATCH}")
    for epoch in range(epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        losses = []
        for i in range(0, len(x_tr), BATCH):
            idx = perm[i : i + BATCH]
            start = time.perf_counter()
            logits, iterations, converged = forward(model, x_tr[idx], method, implicit)
            loss = F.cross_entropy(logits, y_tr[idx])
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
            run.step_seconds.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
            run.iterations.append(iterations)
            run.converged.append(converged)
        with torch.no_grad():
            logits, _, _ = forward(model, x_te, method, implicit=True)
        run.loss.append(sum(losses) / len(losses))
        run.test_acc.append(100 * float((logits.argmax(1) == y_te).float().mean()))
        its = torch.cat(run.iterations[-len(losses) :]).float()
        progress(
            epoch,
            train_loss=run.loss[-1],
            test_acc=run.test_acc[-1],
            mean_iters=float(its.mean()),
            max_iters=int(its.max()),
        )
    return model, run


def plot(
    runs: list[Run], sweep: list[tuple[float, float, int, int]], args: argparse.Namespace
) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = [("-o", "tab:blue"), ("--s", "tab:orange")]
    for run, (style, color) in zip(runs, styles, strict=True):
        epochs = range(1, len(run.loss) + 1)
        axes[0].plot(epochs, run.loss, style, color=color, ms=3, label=run.name)
        axes[1].plot(epochs, run.test_acc, style, color=color, ms=3, label=run.name)
    axes[0].set_yscale("log")
    axes[0].set_title("training loss (the two curves coincide)")
    axes[1].set_title("test accuracy (%)")
    for ax in axes[:2]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    iters = [s[1] for s in sweep]
    axes[2].plot(iters, [s[2] / 2**20 for s in sweep], "-o", label="implicit (GMRES backward)")
    axes[2].plot(iters, [s[3] / 2**20 for s in sweep], "--s", label="unrolled Anderson")
    for rtol, it, _, b_unr in sweep:
        axes[2].annotate(
            f"rtol {rtol:g}",
            (it, b_unr / 2**20),
            fontsize=7,
            xytext=(-20, 8),
            textcoords="offset points",
        )
    axes[2].set_title(f"saved-for-backward memory, one step (batch {BATCH})")
    axes[2].set_xlabel("mean Anderson iterations per image")
    axes[2].set_ylabel("MiB")
    axes[2].set_ylim(0, 1.15 * max(s[3] for s in sweep) / 2**20)
    axes[2].grid(alpha=0.3)
    axes[2].legend()
    fig.tight_layout()
    savefig(fig, args.out, "deq_digits.png")


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    seed_everything(args.seed)
    epochs = 3 if args.quick else 30
    method = fi.Anderson(history=5, maxiter=50, on_failure="ignore")  # float32: rtol 1e-5
    data = load_data(args.seed)
    x_tr, y_tr, x_te, y_te = data
    print(
        f"digits: {len(y_tr)} train, {len(y_te)} test images; DEQ width {HIDDEN}, "
        f"||W||_2 <= {GAMMA}; Anderson(history=5), rtol 1e-5, at most 50 iterations"
    )

    runs: list[Run] = []
    final: dict[str, DEQClassifier] = {}
    for name, implicit in (("implicit (GMRES backward)", True), ("unrolled Anderson", False)):
        final[name], run = train(name, implicit, data, epochs, method, args.seed)
        runs.append(run)

    print("-- summary")
    for run in runs:
        its = torch.cat(run.iterations).float()
        conv = torch.cat(run.converged)
        ms = 1000 * statistics.median(run.step_seconds[1:])
        print(
            f"   {run.name:<27} test accuracy {run.test_acc[-1]:5.1f} %   Anderson iterations "
            f"mean {float(its.mean()):4.1f} max {int(its.max())}   converged "
            f"{100 * float(conv.float().mean()):5.1f} %   {ms:5.1f} ms per training step (median)"
        )
    trained = final["implicit (GMRES backward)"]
    with torch.no_grad():
        _, test_its, test_conv = forward(trained, x_te, method)
    print(
        f"   test set, trained implicit model: iterations mean {float(test_its.float().mean()):.1f}"
        f", max {int(test_its.max())}, converged {100 * float(test_conv.float().mean()):.1f} %"
    )

    print(f"-- memory of one training step (batch {BATCH}), by Anderson tolerance")
    print("        rtol   mean iterations    implicit     unrolled   gradient cosine")
    sweep: list[tuple[float, float, int, int]] = []
    xb, yb = x_tr[:BATCH], y_tr[:BATCH]
    for rtol in (1e-2, 1e-3, 1e-4, 1e-5):
        m = fi.Anderson(history=5, maxiter=50, rtol=rtol, atol=rtol, on_failure="ignore")
        b_imp, mean_its, g_imp = step_memory(trained, xb, yb, m, implicit=True)
        b_unr, _, g_unr = step_memory(trained, xb, yb, m, implicit=False)
        cos = float(F.cosine_similarity(g_imp, g_unr, dim=0))
        sweep.append((rtol, mean_its, b_imp, b_unr))
        print(
            f"   {rtol:9.0e}   {mean_its:15.1f}   {b_imp / 2**20:6.2f} MiB"
            f"   {b_unr / 2**20:6.2f} MiB   {cos:15.6f}"
        )
    print("   (gradient cosine: implicit vs unrolled gradient of the same batch and parameters)")
    plot(runs, sweep, args)

    imp, unr = runs
    seconds = time.perf_counter() - start
    its = torch.cat(imp.iterations).float()
    b_imp, b_unr = sweep[-1][2], sweep[-1][3]
    print(
        f"summary: DEQ test accuracy {imp.test_acc[-1]:.1f} % (unrolled {unr.test_acc[-1]:.1f} %) "
        f"after {epochs} epochs; Anderson iterations mean {float(its.mean()):.1f}, max "
        f"{int(its.max())}; per training step: saved-for-backward {b_imp / 2**20:.2f} MiB vs "
        f"{b_unr / 2**20:.2f} MiB unrolled ({b_unr / b_imp:.1f}x), "
        f"{1000 * statistics.median(imp.step_seconds[1:]):.0f} ms vs "
        f"{1000 * statistics.median(unr.step_seconds[1:]):.0f} ms (median); "
        f"{seconds:.0f} s in all"
    )
    # The claim this example measures: equal accuracy for a fraction of the training memory.
    record = result_record(
        "saved_for_backward_mib_per_training_step",
        method=b_imp / 2**20,
        baseline=b_unr / 2**20,
        higher_is_better=False,
        seeds=1,
    )
    print(f"RESULT: {json.dumps(record)}", flush=True)


if __name__ == "__main__":
    main(parse_args(__doc__.splitlines()[0], default_threads=1))
