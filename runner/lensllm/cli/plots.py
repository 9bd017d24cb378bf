"""Matplotlib figures for the CLI: benchmark metrics against budget or compute, and fitted curves."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lensllm.science.benchmark import BenchRow  # noqa: E402
from lensllm.science.curves import Curves  # noqa: E402
from lensllm.science.race_replay import QualityPoint, RaceReplay, pareto_front  # noqa: E402
from lensllm.science.selectors import Selection  # noqa: E402


def plot_bench(rows: Sequence[BenchRow], path: Path, title: str) -> None:
    """PearCorr and RelAcc against the budget ratio, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        ratios = [r.ratio for r in mine]
        axes[0].plot(ratios, [100 * r.pearcorr for r in mine], marker="o", label=method)
        axes[1].plot(ratios, [100 * r.relacc for r in mine], marker="o", label=method)
    _label_axes(axes, ("PearCorr (%)", "RelAcc (%)"), "budget ratio (target size / largest subset seen)", base=2)
    axes[1].legend(fontsize="small", loc="lower left")
    _save(fig, path, title)


def _label_axes(axes, ylabels: Sequence[str], xlabel: str, base: int) -> None:
    for ax, label in zip(axes, ylabels):
        ax.set_xscale("log", base=base)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)


def _save(fig, path: Path, title: str) -> None:
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


@dataclass(frozen=True)
class RaceCurve:
    """One candidate of a race as its last decided round saw it: every point it measured, the law's fitted
    curve, and the prediction at the target with its interval."""

    name: str
    sizes: np.ndarray
    losses: np.ndarray
    law: str
    curve: Callable[[np.ndarray], np.ndarray]
    predicted_loss: float | None
    interval: tuple[float, float] | None
    eliminated_in: int | None


def plot_race_fits(rows: Sequence[RaceCurve], target: float, path: Path) -> None:
    """Each candidate's measured points (all rounds) and fitted curve, log-log; star and bar: the race's
    prediction and its interval at the target; dashed: eliminated, with the round."""
    fig, ax = plt.subplots(figsize=(10, 6.5), constrained_layout=True)
    smallest = min(float(r.sizes.min()) for r in rows)
    grid = np.geomspace(smallest, max(target, *(float(r.sizes.max()) for r in rows)), 200)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(rows), 2)))
    for row, color in zip(rows, colors):
        out = row.eliminated_in is not None
        label = f"{row.name} ({row.law}{f', out after round {row.eliminated_in}' if out else ''})"
        ax.scatter(row.sizes, row.losses, s=18, color=color)
        ax.plot(grid, row.curve(grid), color=color, lw=1.2, ls="--" if out else "-", label=label)
        if row.predicted_loss is not None and math.isfinite(row.predicted_loss) and row.predicted_loss > 0:
            ax.errorbar([target], [row.predicted_loss], yerr=_error_bar(row.predicted_loss, row.interval),
                        fmt="*", ms=10, color=color, capsize=3)
    ax.axvline(target, color="black", ls="--", lw=1, label=f"target {target:,.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning examples")
    ax.set_ylabel("test bits per byte")
    ax.set_title("race: measured points, each candidate's fitted law, prediction and nominal 90% interval at the target")
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _error_bar(predicted: float, interval: tuple[float, float] | None) -> list[list[float]] | None:
    """The interval as distances below and above the prediction. The race predicts the mean of its draws in log
    space and bounds them by quantiles: with skewed draws the mean may lie outside the bounds (no bar that side)."""
    if interval is None or not all(math.isfinite(v) for v in interval):
        return None
    low, high = interval
    return [[max(predicted - low, 0.0)], [max(high - predicted, 0.0)]]


def plot_race(runs: Sequence[RaceReplay], front: Sequence[QualityPoint], fixed: Sequence[QualityPoint], path: Path, title: str) -> None:
    """RelAcc and PearCorr against compute: fixed-budget AtS per ratio, the race's Pareto front, and its runs."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    best = pareto_front(front)
    for ax, metric in zip(axes, ("relacc", "pearcorr")):
        fixed_x, fixed_y = [100 * p.compute_fraction for p in fixed], [100 * getattr(p, metric) for p in fixed]
        ax.plot(fixed_x, fixed_y, marker="s", label="fixed-budget AtS")
        for p, x, y in zip(fixed, fixed_x, fixed_y):
            ax.annotate(p.label.split()[-1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        ax.plot(
            [100 * p.compute_fraction for p in best],
            [100 * getattr(p, metric) for p in best],
            marker="o",
            drawstyle="steps-post" if metric == "relacc" else "default",
            label="race: Pareto front (RelAcc) over settings, mean over seeds",
        )
        ax.scatter(
            [100 * r.compute_fraction for r in runs],
            [100 * getattr(r, metric) for r in runs],
            marker="*",
            s=120,
            color="black",
            zorder=3,
            label="race with the chosen settings, one star per seed",
        )
    _label_axes(axes, ("RelAcc (%)", "PearCorr (%)"), "compute (% of fully fine-tuning every candidate)", base=10)
    axes[1].legend(fontsize="small", loc="best")
    _save(fig, path, title)
