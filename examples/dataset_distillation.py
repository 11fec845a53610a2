"""Dataset distillation: learn one synthetic 8x8 image per digit class by implicit differentiation.

Data: scikit-learn's digits (1797 images of 8x8 pixels, ships with scikit-learn, no download),
pixels scaled to [0, 1], split 50/50 into train and test (stratified, fixed split).

Classifier: multinomial logistic regression with a small L2 penalty (weight decay ``LAM``) on
weights and biases, fitted to convergence on whatever ten images it is given.

Inner problem (fit on the synthetic set):
    (W, b)*(S) = argmin_{W, b}  mean_k CE(S_k W + b, k) + LAM/2 (||W||^2 + ||b||^2)
Outer problem (distillation):
    min_S  mean_i CE(x_i W* + b*, y_i)   over the real training images x_i,
where ``S`` holds the ten synthetic images (one per class, label k for row k), clipped to [0, 1].

The synthetic *data* is the differentiated argument: ``fi.minimize`` (Newton-CG) fits the
classifier, and its solution carries the implicit derivative ``d(W, b)*/dS`` from the
stationarity condition ``grad L = 0`` (one CG solve with the Hessian per outer step), so Adam
can move the pixels. The inner iterations are never differentiated, and each inner solve
starts warm from the previous one.

Baselines, same classifier and weight decay: one random real training image per class (the
starting point of the distillation; averaged over several draws) and the ten class means.
Before training, the implicit hypergradient is checked against a central finite difference.

Writes ``dataset_distillation.png`` (to ``--out``): the starting images, the distilled images
and the distilled images minus their mean, each as a 2x5 grid.

Run: ``python examples/dataset_distillation.py [--quick] [--out DIR] [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from _common import Progress, Timer, parse_args, result_record, savefig, seed_everything
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import funcimplicit as fi

DTYPE = torch.float64
CLASSES = 10
LAM = 1e-3  # the classifier's weight decay
Params = tuple[torch.Tensor, torch.Tensor]  # (W: 64 x 10, b: 10)
Split = tuple[torch.Tensor, torch.Tensor]  # (images n x 64, labels n)

# Inner solver: Newton with an inexact CG step (warm starts need only a few Newton steps).
NEWTON = fi.Newton(solve=fi.CG(maxiter=50, on_failure="ignore"))
# The implicit derivative's linear solve: the Hessian is symmetric positive definite, so CG.
BACKWARD = fi.CG(maxiter=1000)


def load_data() -> tuple[Split, Split]:
    """Digits with pixels in [0, 1]: (train, test), 50/50 stratified, a fixed split."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=0.5, stratify=y, random_state=0
    )

    def to_torch(x: object, y: object) -> Split:
        return torch.as_tensor(x, dtype=DTYPE), torch.as_tensor(y, dtype=torch.int64)

    return to_torch(x_tr, y_tr), to_torch(x_te, y_te)


def objective(
    params: Params, images: torch.Tensor, targets: torch.Tensor, lam: float
) -> torch.Tensor:
    """The inner training loss: mean cross-entropy (one-hot ``targets``) plus weight decay."""
    w, b = params
    log_probs = torch.log_softmax(images @ w + b, dim=-1)
    return -(targets * log_probs).sum(-1).mean() + 0.5 * lam * ((w**2).sum() + (b**2).sum())


def zeros() -> Params:
    return torch.zeros(64, CLASSES, dtype=DTYPE), torch.zeros(CLASSES, dtype=DTYPE)


def fit(images: torch.Tensor, start: Params | None = None) -> fi.Solution[Params]:
    """Fit the classifier on ten images (row k has label k); implicit derivatives in ``images``."""
    targets = torch.eye(CLASSES, dtype=DTYPE)
    init = zeros() if start is None else start
    return fi.minimize(objective, init, images, targets, LAM, method=NEWTON, solve=BACKWARD)


def fit_to_tolerance(images: torch.Tensor) -> Params:
    """A cold, fully converged fit (Newton's default tolerance): what the accuracies use."""
    targets = torch.eye(CLASSES, dtype=DTYPE)
    sol = fi.minimize(objective, zeros(), images.detach(), targets, LAM, implicit=False)
    if not bool(sol.converged):
        raise RuntimeError(f"the classifier fit did not converge: {sol}")
    return sol.value


def accuracy(params: Params, data: Split) -> float:
    w, b = params
    x, y = data
    return float(((x @ w + b).argmax(-1) == y).double().mean())


def random_real_images(train: Split, generator: torch.Generator) -> torch.Tensor:
    """One training image per class, drawn at random: a 10 x 64 tensor, row k of class k."""
    x, y = train
    rows = []
    for k in range(CLASSES):
        members = torch.nonzero(y == k).squeeze(-1)
        rows.append(x[members[torch.randint(len(members), (1,), generator=generator)]])
    return torch.cat(rows)


def class_means(train: Split) -> torch.Tensor:
    x, y = train
    return torch.stack([x[y == k].mean(0) for k in range(CLASSES)])


def distill(
    start: torch.Tensor, train: Split, test: Split, steps: int, lr: float
) -> tuple[torch.Tensor, list[float]]:
    """Adam on the synthetic pixels against the training cross-entropy; returns images, losses."""
    images = start.clone().requires_grad_()
    optimizer = torch.optim.Adam([images], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    x_tr, y_tr = train
    params = zeros()
    losses: list[float] = []
    progress = Progress(total=steps, every=max(1, steps // 10))
    for step in range(steps):
        sol = fit(images, start=params)  # warm start from the last fit
        w, b = sol.value  # carries d(W, b)*/d images
        loss = torch.nn.functional.cross_entropy(x_tr @ w + b, y_tr)
        optimizer.zero_grad()
        loss.backward()  # one CG solve with the inner Hessian, then a VJP in the images
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            images.clamp_(0.0, 1.0)  # keep them images
        params = (w.detach(), b.detach())
        losses.append(float(loss.detach()))
        progress(
            step,
            train_ce=losses[-1],
            train_acc=accuracy(params, train),
            test_acc=accuracy(params, test),
            newton_iters=int(sol.iterations),
        )
    return images.detach(), losses


def plot(
    start: torch.Tensor,
    images: torch.Tensor,
    args: argparse.Namespace,
    start_acc: float,
    test_acc: float,
) -> None:
    """Three 2x5 grids: the starting real images, the distilled ones (dark = high pixel), and
    the distilled ones minus their mean (red = brighter than the average distilled image)."""
    import matplotlib.pyplot as plt

    contrast = images - images.mean(0)
    limit = float(contrast.abs().max())
    fig = plt.figure(figsize=(14, 2.9))
    panels = fig.subfigures(1, 3, wspace=0.04)
    grids = (
        (start, f"start: a random real image per class ({100 * start_acc:.1f}% test)", "gray_r"),
        (images, f"distilled ({100 * test_acc:.1f}% test)", "gray_r"),
        (contrast, "distilled minus their mean", "RdBu_r"),
    )
    for panel, (grid, title, cmap) in zip(panels, grids, strict=True):
        axes = panel.subplots(2, 5, gridspec_kw={"hspace": 0.25, "wspace": 0.1})
        vmin, vmax = (-limit, limit) if cmap == "RdBu_r" else (0.0, 1.0)
        for k, ax in enumerate(axes.flat):
            ax.imshow(grid[k].reshape(8, 8).numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{k}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        panel.suptitle(title, fontsize=11)
    savefig(fig, args.out, "dataset_distillation.png")


def outer_loss(images: torch.Tensor, train: Split) -> torch.Tensor:
    """Training cross-entropy of the classifier fitted (to tolerance) on ``images``."""
    targets = torch.eye(CLASSES, dtype=DTYPE)
    w, b = fi.minimize(objective, zeros(), images, targets, LAM, solve=BACKWARD).value
    return torch.nn.functional.cross_entropy(train[0] @ w + b, train[1])


def check_hypergradient(start: torch.Tensor, train: Split, generator: torch.Generator) -> float:
    """Implicit directional derivative against a central finite difference; relative error."""
    images = start.clone().requires_grad_()
    (grad,) = torch.autograd.grad(outer_loss(images, train), images)
    direction = torch.randn(start.shape, dtype=DTYPE, generator=generator)
    eps = 1e-4
    with torch.no_grad():
        plus = outer_loss(start + eps * direction, train)
        minus = outer_loss(start - eps * direction, train)
    finite_difference = float((plus - minus) / (2 * eps))
    implicit = float((grad * direction).sum())
    error = abs(implicit - finite_difference) / abs(finite_difference)
    print(
        f"hypergradient check at the start: directional derivative implicit {implicit:.6f}, "
        f"central finite difference {finite_difference:.6f} (relative error {error:.1e})"
    )
    return error


def main(args: argparse.Namespace) -> None:
    generator = seed_everything(args.seed)
    torch.set_num_threads(1)  # tiny problems: one thread is fastest, and steady on busy machines
    steps = 40 if args.quick else 300
    draws = 5 if args.quick else 20
    lr = 0.03
    train, test = load_data()
    print(
        f"digits 8x8, pixels in [0, 1]: train {len(train[1])}, test {len(test[1])}; "
        f"logistic regression with weight decay {LAM:g} on 10 images"
    )

    with Timer() as t_base:
        draws_acc = [
            accuracy(fit_to_tolerance(random_real_images(train, generator)), test)
            for _ in range(draws)
        ]
        means_acc = accuracy(fit_to_tolerance(class_means(train)), test)
    random_mean = statistics.mean(draws_acc)
    random_sd = statistics.stdev(draws_acc)
    print(
        f"baseline, one random real image per class ({draws} draws): test accuracy "
        f"{100 * random_mean:.1f}% +- {100 * random_sd:.1f}% (min {100 * min(draws_acc):.1f}%, "
        f"max {100 * max(draws_acc):.1f}%)"
    )
    print(f"baseline, class means: test accuracy {100 * means_acc:.1f}%  ({t_base.seconds:.1f} s)")

    start = random_real_images(train, generator)
    start_acc = accuracy(fit_to_tolerance(start), test)
    print(
        f"-- distilling: start from one random real image per class (test {100 * start_acc:.1f}%), "
        f"{steps} Adam steps, lr {lr} (cosine)"
    )
    check_hypergradient(start, train, generator)
    with Timer() as t_distill:
        images, losses = distill(start, train, test, steps, lr)
    final = fit_to_tolerance(images)
    distilled_acc = accuracy(final, test)
    distilled_train = accuracy(final, train)
    print(
        f"distilled images: train accuracy {100 * distilled_train:.1f}%, test accuracy "
        f"{100 * distilled_acc:.1f}% (training cross-entropy {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"{t_distill.seconds:.1f} s, {1e3 * t_distill.seconds / steps:.0f} ms per step)"
    )

    print("\nsummary: test accuracy of logistic regression trained on 10 images")
    print(f"  {'one random real image per class':<36}{100 * random_mean:>6.1f}%  (mean of {draws})")
    print(f"  {'the distillation start':<36}{100 * start_acc:>6.1f}%")
    print(f"  {'class means':<36}{100 * means_acc:>6.1f}%")
    print(f"  {'distilled (implicit gradients)':<36}{100 * distilled_acc:>6.1f}%")

    plot(start, images, args, start_acc, distilled_acc)
    vs_random = "beats" if distilled_acc > random_mean else "does NOT beat"
    vs_means = "beats" if distilled_acc > means_acc else "is below"
    print(
        f"summary: 10 distilled images give {100 * distilled_acc:.1f}% test accuracy: "
        f"{vs_random} one random real image per class ({100 * random_mean:.1f}% mean of {draws}) "
        f"and {vs_means} class means ({100 * means_acc:.1f}%); {steps} steps in "
        f"{t_distill.seconds:.1f} s"
    )
    record = result_record(  # the stronger of the two baselines
        "test_accuracy",
        method=distilled_acc,
        baseline=max(random_mean, means_acc),
        higher_is_better=True,
        seeds=1,
    )
    print(f"RESULT: {json.dumps(record)}", flush=True)


if __name__ == "__main__":
    main(parse_args(__doc__.splitlines()[0]))
