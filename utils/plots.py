"""PNG plots people would rather look at than read: ROC, score histograms, precision-recall, loss curves.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend switch), and
writes every file atomically, so a plot is either complete or absent.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve

from utils.atomic import atomic_path

DPI = 110


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Render a matplotlib ``Figure`` to ``path`` as PNG, atomically (shared by every plot in the toolkit)."""
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path


def _finish_rate_axes(ax, xlabel: str, ylabel: str, title: str, legend: str | None) -> None:
    """Labels, title, grid, a 0..1 rate on y, and the legend (at ``legend``, None for none) of a curve panel."""
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc=legend)


def plot_roc(
    path: str | Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str = "ROC",
    log_far: bool = False,
) -> Path:
    """ROC curves (TAR against FAR), one per named (fpr, tpr) pair, e.g. model and baseline on one plot."""
    figure = Figure(figsize=(5.5, 5))
    ax = figure.add_subplot()
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if log_far:
            keep = fpr > 0
            fpr, tpr = fpr[keep], tpr[keep]
        ax.plot(fpr, tpr, label=name, linewidth=1.5)
    if log_far:
        ax.set_xscale("log")
    else:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
    _finish_rate_axes(ax, "false accept rate", "true accept rate", title, "lower right" if curves else None)
    return save_figure(figure, path)


def plot_score_histograms(
    path: str | Path,
    scores: np.ndarray | Sequence[float],
    same: np.ndarray | Sequence[bool],
    threshold: float | None = None,
    title: str = "pair scores",
    xlabel: str = "score",
    bins: int = 50,
) -> Path:
    """Overlaid histograms of same-identity and different-identity pair scores, with the threshold marked."""
    scores = np.asarray(scores, dtype=float).ravel()
    same = np.asarray(same, dtype=bool).ravel()
    edges = np.histogram_bin_edges(scores, bins=bins)
    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    ax.hist(scores[same], bins=edges, alpha=0.6, label=f"same ({int(same.sum())})", color="tab:green")
    ax.hist(scores[~same], bins=edges, alpha=0.6, label=f"different ({int((~same).sum())})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    return save_figure(figure, path)


def plot_pr_curves(path: str | Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                   title: str = "precision-recall") -> Path:
    """Precision-recall curves (name -> (precision, recall, average precision)), AP in the legend."""
    figure = Figure(figsize=(5.5, 5))
    ax = figure.add_subplot()
    for name, (precision, recall, ap) in curves.items():
        ax.plot(recall, precision, label=f"{name} (AP {ap:.4f})" if name else f"AP {ap:.4f}", linewidth=1.5)
    ax.set_xlim(0, 1)
    _finish_rate_axes(ax, "recall", "precision", title, "lower left" if curves else None)
    return save_figure(figure, path)


def plot_pr_curve(
    path: str | Path,
    scores: np.ndarray | Sequence[float],
    same: np.ndarray | Sequence[bool],
    higher_is_same: bool = True,
    title: str = "precision-recall",
) -> Path:
    """Precision-recall curve of 'same identity' decisions, with average precision in the legend."""
    sim = np.asarray(scores, dtype=float).ravel()
    sim = sim if higher_is_same else -sim
    same = np.asarray(same, dtype=bool).ravel()
    precision, recall, _ = precision_recall_curve(same, sim)
    return plot_pr_curves(path, {"": (precision, recall, average_precision_score(same, sim))}, title)


def plot_loss_curves(
    path: str | Path,
    history: Mapping[str, Sequence[float]],
    xlabel: str = "epoch",
    title: str = "training",
) -> Path:
    """One panel per logged quantity against its step; "panel/curve" keys share a panel ("loss/train", "loss/val")."""
    panels: dict[str, dict[str, np.ndarray]] = {}
    for key, values in history.items():
        if len(values):
            panel, _, curve = key.partition("/")
            panels.setdefault(panel, {})[curve or panel] = np.asarray(values, dtype=float)
    if not panels:
        raise ValueError("no logged values to plot")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4 * columns, 3 * rows))
    figure.suptitle(title)
    for i, (panel, curves) in enumerate(panels.items()):
        ax = figure.add_subplot(rows, columns, i + 1)
        for curve, values in curves.items():
            marker = "o" if len(values) <= 30 else None
            ax.plot(np.arange(1, len(values) + 1), values, marker=marker, markersize=3, label=curve)
        if len(curves) > 1:
            ax.legend()
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_accuracy_over_time(path: str | Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                            title: str = "validation accuracy over training time",
                            ylabel: str = "pair accuracy") -> Path:
    """One accuracy curve per named (minutes, accuracy) pair: recipes compared at the same wall-clock budget."""
    figure = Figure(figsize=(8.5, 4.5))
    ax = figure.add_subplot()
    colours = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"].colors  # one colour per curve
    for (name, (minutes, accuracy)), colour in zip(curves.items(), itertools.cycle(colours)):
        ax.plot(minutes, accuracy, marker="o", markersize=3, label=name, color=colour)
    ax.set_ylim(0.5, 1.0)  # chance to perfect on balanced pairs
    ax.set_xlabel("training minutes")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")  # beside the axes, never on a curve
    return save_figure(figure, path)
