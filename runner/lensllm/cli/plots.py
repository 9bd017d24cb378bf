"""Matplotlib figures for the CLI: benchmark metrics against budget, and fitted curves."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lensllm.science.benchmark import BenchRow  # noqa: E402
from lensllm.science.curves import Curves  # noqa: E402
from lensllm.science.selectors import Selection  # noqa: E402


def plot_bench(rows: Sequence[BenchRow], path: Path, title: str) -> None:
    """PearCorr and RelAcc against the budget ratio, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        ratios = [r.ratio for r in mine]
        axes[0].plot(ratios, [100 * r.pearcorr for r in mine], marker="o", label=method)
        axes[1].plot(ratios, [100 * r.relacc for r in mine], marker="o", label=method)
    for ax, label in zip(axes, ("PearCorr (%)", "RelAcc (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget ratio (target size / largest subset seen)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="small", loc="lower left")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fits(
    curves: Curves, full: Curves, selection: Selection, target: float, path: Path, ylabel: str = "test loss"
) -> None:
    """Every model's observed points (filled: seen by the fit) and fitted curve, log-log, target marked."""
    fig, ax = plt.subplots(figsize=(10, 6.5), constrained_layout=True)
    grid = np.geomspace(full.sizes[0], max(target, full.sizes[-1]), 200)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(curves.n_models, 2)))
    for i, model in enumerate(curves.models):
        color = colors[i % len(colors)]
        ax.scatter(full.sizes, full.losses[i], s=14, facecolors="none", edgecolors=color, alpha=0.6)
        ax.scatter(curves.sizes, curves.losses[i], s=18, color=color)
        if selection.curve_fns is not None:
            ax.plot(grid, selection.curve_fns[i](grid), color=color, lw=1.2, label=model)
        if selection.predicted_loss is not None:
            ax.scatter([target], [selection.predicted_loss[i]], marker="*", s=90, color=color)
    ax.axvline(target, color="black", ls="--", lw=1, label=f"target {target:,.0f}")
    ax.axvline(curves.sizes[-1], color="grey", ls=":", lw=1, label=f"budget {curves.sizes[-1]:,.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning examples")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{selection.method}: fitted curves (filled points were seen by the fit)")
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    fig.savefig(path, dpi=120)
    plt.close(fig)
