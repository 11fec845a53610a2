"""Learn one weight decay per feature of a logistic regression by implicit hypergradients.

Data: scikit-learn's breast cancer set (569 tumours, 30 features, ships with scikit-learn, no
download), standardized with training statistics, split into train / validation / test.

Inner problem (training):   (w, b)*(lam) = argmin  mean log-loss(X_tr w + b, y_tr)
                                                   + 1/2 sum_j lam_j w_j^2   (b not penalized)
Outer problem (validation): min_{log lam}  mean log-loss(X_val w* + b*, y_val)

The inner problem is solved by ``fi.minimize`` with Newton-CG (``fi.Newton(solve=fi.CG())``);
its solution carries implicit derivatives in ``lam`` by default (one CG solve with the Hessian
per hypergradient), so Newton's iterations are never differentiated. The per-feature decays
start from the best single decay of a grid search on validation log-loss, which is also the
baseline they are compared with on held-out test data.

Run: ``python examples/logistic_weight_decay.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import Progress, Timer, parse_args, savefig, seed_everything
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits as log_loss

import funcimplicit as fi

DTYPE = torch.float64
Split = tuple[Tensor, Tensor]
Params = tuple[Tensor, Tensor]  # (weights w, intercept b): a pytree, solved for jointly
NEWTON = fi.Newton(solve=fi.CG())


def load_data(seed: int) -> tuple[Split, Split, Split]:
    """Breast cancer, standardized: (train, validation, test), 50/25/25 %, stratified."""
    data = load_breast_cancer()
    x_tr, x_rest, y_tr, y_rest = train_test_split(
        data.data, data.target, test_size=0.5, random_state=seed, stratify=data.target
    )
    x_val, x_te, y_val, y_te = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )
    scaler = StandardScaler().fit(x_tr)

    def to_torch(x: object, y: object) -> Split:
        return (
            torch.as_tensor(scaler.transform(x), dtype=DTYPE),
            torch.as_tensor(y, dtype=DTYPE),
        )

    return to_torch(x_tr, y_tr), to_torch(x_val, y_val), to_torch(x_te, y_te)


def training_objective(params: Params, lam: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Mean log-loss plus per-feature L2 penalties (the intercept is not penalized)."""
    w, b = params
    return log_loss(x @ w + b, y) + 0.5 * (lam * w**2).sum()


def fit(lam: Tensor, train: Split, init: Params, implicit: bool = True) -> fi.Solution[Params]:
    """Newton-CG on the training objective, warm-started at ``init``."""
    return fi.minimize(training_objective, init, lam, *train, method=NEWTON, implicit=implicit)


def evaluate(params: Params, data: Split) -> tuple[float, float]:
    """(mean log-loss, accuracy) of the classifier ``params`` on ``data``."""
    w, b = params
    x, y = data
    logits = x @ w + b
    return float(log_loss(logits, y)), float(((logits > 0) == (y > 0.5)).double().mean())


def zeros(p: int) -> Params:
    return torch.zeros(p, dtype=DTYPE), torch.zeros((), dtype=DTYPE)


def detach(params: Params) -> Params:
    return params[0].detach(), params[1].detach()


def val_loss_and_grad(log_lam: Tensor, train: Split, val: Split, implicit: bool) -> Tensor:
    """d validation log-loss / d log_lam, implicit or through Newton's iterations."""
    log_lam = log_lam.detach().requires_grad_()
    w, b = fit(log_lam.exp(), train, zeros(len(log_lam)), implicit=implicit).value
    (grad,) = torch.autograd.grad(log_loss(val[0] @ w + b, val[1]), log_lam)
    return grad


def check_hypergradient(log_lam: Tensor, train: Split, val: Split) -> tuple[float, float, float]:
    """Implicit hypergradient vs autograd through Newton's steps and vs finite differences.

    Returns (cosine with unrolled, relative error to unrolled, relative error of the directional
    derivative against a central finite difference).
    """
    g_implicit = val_loss_and_grad(log_lam, train, val, implicit=True)
    g_unrolled = val_loss_and_grad(log_lam, train, val, implicit=False)
    cosine = float(torch.nn.functional.cosine_similarity(g_implicit, g_unrolled, dim=0))
    rel = float((g_implicit - g_unrolled).norm() / g_unrolled.norm())
    direction = torch.randn(len(log_lam), dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    eps = 1e-5

    def outer(ll: Tensor) -> float:
        return evaluate(detach(fit(ll.exp(), train, zeros(len(ll))).value), val)[0]

    fd = (outer(log_lam + eps * direction) - outer(log_lam - eps * direction)) / (2 * eps)
    directional = float(g_implicit @ direction)
    return cosine, rel, abs(directional - fd) / abs(fd)


def main(args: argparse.Namespace) -> None:
    seed_everything(args.seed)
    steps = 30 if args.quick else 200
    lr = 0.05
    train, val, test = load_data(args.seed)
    p = train[0].shape[1]
    print(
        f"breast cancer: {p} features; "
        f"train {len(train[1])}, validation {len(val[1])}, test {len(test[1])}"
    )

    # Baseline: one weight decay for all features, best on validation log-loss.
    grid = torch.logspace(-4, 1, 30, dtype=DTYPE)
    grid_val: list[float] = []
    grid_test: list[float] = []
    params = zeros(p)
    with Timer() as t_grid:
        for lam in grid.flip(0):  # strong to weak decay, each warm-started at the previous one
            params = detach(fit(torch.full((p,), float(lam), dtype=DTYPE), train, params).value)
            grid_val.append(evaluate(params, val)[0])
            grid_test.append(evaluate(params, test)[0])
    grid_val.reverse()
    grid_test.reverse()
    best = min(range(len(grid)), key=grid_val.__getitem__)
    lam_grid = float(grid[best])
    sol = fit(torch.full((p,), lam_grid, dtype=DTYPE), train, zeros(p))
    params_grid = detach(sol.value)
    (gv_loss, gv_acc), (gt_loss, gt_acc) = evaluate(params_grid, val), evaluate(params_grid, test)
    print(
        f"grid search ({len(grid)} decays, {t_grid.seconds:.2f} s): best lam={lam_grid:.3g}; "
        f"val log-loss {gv_loss:.4f}, acc {gv_acc:.3f}; test log-loss {gt_loss:.4f}, "
        f"acc {gt_acc:.3f}"
    )

    # Cross-checks at the grid optimum: the inner solution against scikit-learn, and the
    # implicit hypergradient against autograd through Newton's steps and finite differences.
    sk = LogisticRegression(C=1.0 / (len(train[1]) * lam_grid), tol=1e-12, max_iter=10_000)
    sk.fit(train[0].numpy(), train[1].numpy())
    sk_diff = float((params_grid[0] - torch.as_tensor(sk.coef_[0])).abs().max())
    print(
        f"Newton-CG: {int(sol.iterations)} iterations, gradient norm "
        f"{float(sol.residual_norm):.1e}; max |w - w_sklearn| = {sk_diff:.1e}"
    )
    log_lam0 = torch.full((p,), math.log(lam_grid), dtype=DTYPE)
    cosine, rel, fd_rel = check_hypergradient(log_lam0, train, val)
    print(
        f"hypergradient: implicit vs unrolled through Newton: cosine {cosine:.6f}, "
        f"rel. error {rel:.1e}; directional derivative vs finite difference: rel. error "
        f"{fd_rel:.1e}"
    )

    # Per-feature weight decays: Adam on log lam, starting from the grid optimum.
    log_lam = log_lam0.clone().requires_grad_()
    opt = torch.optim.Adam([log_lam], lr=lr)
    params = params_grid
    hist: dict[str, list[float]] = {"val": [], "test": [], "test_acc": []}
    progress = Progress(total=steps, every=max(1, steps // 8))
    print("-- per-feature weight decays, implicit hypergradient through fi.minimize")
    with Timer() as t_hyper:
        for step in range(steps):
            w, b = fit(log_lam.exp(), train, params).value
            val_loss = log_loss(val[0] @ w + b, val[1])
            opt.zero_grad()
            torch.autograd.backward(val_loss)
            opt.step()
            params = (w.detach(), b.detach())  # warm start for the next inner solve
            test_loss, test_acc = evaluate(params, test)
            hist["val"].append(val_loss.item())
            hist["test"].append(test_loss)
            hist["test_acc"].append(test_acc)
            progress(step, val_logloss=hist["val"][-1], test_logloss=test_loss, test_acc=test_acc)
    params_pf = detach(fit(log_lam.detach().exp(), train, params).value)
    (pv_loss, pv_acc), (pt_loss, pt_acc) = evaluate(params_pf, val), evaluate(params_pf, test)
    lam_pf = log_lam.detach().exp()

    print("\nsummary")
    print(f"  {'method':<34}{'val loss':>9}{'val acc':>9}{'test loss':>11}{'test acc':>10}")
    print(f"  {f'grid, single lam={lam_grid:.3g}':<34}{gv_loss:>9.4f}{gv_acc:>9.3f}", end="")
    print(f"{gt_loss:>11.4f}{gt_acc:>10.3f}")
    print(f"  {f'per-feature ({steps} steps)':<34}{pv_loss:>9.4f}{pv_acc:>9.3f}", end="")
    print(f"{pt_loss:>11.4f}{pt_acc:>10.3f}")
    n_test = len(test[1])
    print(
        f"  test accuracy difference: {round((pt_acc - gt_acc) * n_test):+d} of {n_test} "
        f"test points; learned decays: min {float(lam_pf.min()):.3g}, "
        f"median {float(lam_pf.median()):.3g}, max {float(lam_pf.max()):.3g}; "
        f"hypergradient loop {t_hyper.seconds:.1f} s"
    )

    plot(args, hist, grid, grid_val, grid_test, lam_grid, gv_loss, gt_loss)
    verdict = "beats" if pt_loss < gt_loss else "does NOT beat"
    if pv_loss < gv_loss and pt_loss > gt_loss:
        verdict = "overfits the validation set and does NOT beat"
    print(
        f"RESULT: per-feature weight decays: test log-loss {pt_loss:.4f} (acc {pt_acc:.3f}) "
        f"{verdict} single decay from grid search {gt_loss:.4f} (acc {gt_acc:.3f}); "
        f"val log-loss {pv_loss:.4f} vs {gv_loss:.4f}; implicit vs unrolled hypergradient "
        f"cosine {cosine:.6f}"
    )


def plot(
    args: argparse.Namespace,
    hist: dict[str, list[float]],
    grid: Tensor,
    grid_val: list[float],
    grid_test: list[float],
    lam_grid: float,
    gv_loss: float,
    gt_loss: float,
) -> None:
    """Left: log-loss per hypergradient step; right: the grid search's curves."""
    import matplotlib.pyplot as plt

    fig, (ax, ax_grid) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[2, 1])
    steps = range(1, len(hist["val"]) + 1)
    ax.plot(steps, hist["val"], color="C0", label="per-feature: validation")
    ax.plot(steps, hist["test"], color="C0", linestyle="--", label="per-feature: test")
    ax.axhline(gv_loss, color="k", linewidth=1, label="grid search: validation")
    ax.axhline(gt_loss, color="k", linewidth=1, linestyle="--", label="grid search: test")
    ax.set_xlabel("hypergradient step (Adam on log weight decays)")
    ax.set_ylabel("mean log-loss (log scale)")
    ax.set_yscale("log")
    ax.set_title("Per-feature weight decays, logistic regression on breast cancer (30 features)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_grid.semilogx(grid.numpy(), grid_val, "o-", markersize=3, color="k", label="validation")
    ax_grid.semilogx(grid.numpy(), grid_test, color="k", linestyle="--", label="test")
    ax_grid.axvline(lam_grid, color="C2", linewidth=1, label=f"chosen lam={lam_grid:.3g}")
    ax_grid.set_xlabel("single weight decay lam (all features)")
    ax_grid.set_ylabel("mean log-loss")
    ax_grid.set_title("Grid search baseline")
    ax_grid.legend(fontsize=8)
    ax_grid.grid(alpha=0.3)
    savefig(fig, args.out, "logistic_weight_decay.png")


if __name__ == "__main__":
    main(parse_args(__doc__.splitlines()[0], default_threads=1))
