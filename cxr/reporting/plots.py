"""The figures of a run folder: ``confusion_matrix.png``, ``training_curves.png``, ``operating_point.png`` and
``errors.png``, each drawn from values passed in (matplotlib, off-screen), and each naming the model's own classes
(:class:`~cxr.labels.Classes`): its class names, its negative class and its critical ones."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from cxr.labels import Classes
from cxr.metrics.operating_point import OperatingPoint, operating_rates, threshold_curve
from cxr.reporting.tables import and_join

__all__ = ["plot_confusion_matrix", "plot_training_curves", "plot_operating_point", "plot_error_gallery"]

_logger = logging.getLogger(__name__)


def _pyplot():
    """matplotlib's pyplot on the off-screen backend, imported on the first figure: the app and the model loaders
    import the reporting layer without drawing anything."""
    import matplotlib  # matplotlib loads only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib loads only when a figure is drawn

    return plt


def plot_confusion_matrix(path: Path, confusion: Sequence[Sequence[int]], classes: Classes, title: str = "") -> None:
    """Save the confusion matrix (rows = true class) with counts, coloured by row share; the films of another class
    called the negative one in bold.

    Args:
        path: the image file to write.
        confusion: ``K x K`` counts, rows = true class, in ``classes``' order.
        classes: the model's classes, which name the axes.
        title: the figure's title (default ``Confusion matrix``).

    Raises:
        ValueError: ``confusion`` is not ``K x K`` for the ``K`` classes.
    """
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    names = list(classes.names)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"a {cm.shape} confusion matrix for {len(names)} classes ({', '.join(names)})")
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=120)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    normal = classes.negative_index
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontweight="bold" if normal is not None and j == normal and i != normal and cm[i, j] else "normal",
            )
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title or "Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_operating_point(
    path: Path, labels, probabilities, operating_point: OperatingPoint, part: str = "test"
) -> None:
    """Save the threshold's trade-off on ``part``: the share of critical films (e.g. COVID + Viral Pneumonia)
    called the negative class (e.g. Normal) and the share of negative films flagged (not called negative), over the
    threshold on P(negative), with the model's operating point marked. The classes are the operating point's
    (``operating_point.classes``)."""
    plt = _pyplot()

    classes = operating_point.classes
    neg, critical = classes.negative, classes.critical_label
    t, missed, flagged = threshold_curve(labels, probabilities, classes)
    at = operating_rates(labels, probabilities, operating_point.normal_threshold, classes)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(t, 100 * missed, color="tab:red", label=f"{critical} called {neg}")
    ax.plot(t, 100 * flagged, color="tab:blue", label=f"{neg} films flagged (not called {neg})")
    ax.axvline(operating_point.normal_threshold, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"{operating_point.rule}\n{part}: {at['critical_called_normal']}/{at['critical']} missed, "
        f"{at['normal'] - at['normal_kept']}/{at['normal']} {neg} flagged",
        xy=(operating_point.normal_threshold, 50),
        xytext=(0.03, 0.55),
        textcoords="axes fraction",
        fontsize=8,
        arrowprops={"arrowstyle": "->", "linewidth": 0.8},
    )
    ax.set_xlabel(f"threshold on the calibrated P({neg})")
    ax.set_ylabel(f"% of each group of {part} films")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"The operating point on {part} (n={len(labels)})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_error_gallery(path: Path, entries: Sequence[Any], wrong: int, classes: Classes, title: str = "") -> None:
    """Save the misclassified films as a grid: each (RGB heat map over the film, caption, whether it is a critical
    film called the negative class — captioned in red) of ``entries``; ``wrong`` films were misclassified in all
    (the figure may show fewer).

    Args:
        path: the image file to write.
        entries: :func:`cxr.training.evaluation.error_entries`' entries, in order.
        wrong: how many films were misclassified.
        classes: the model's classes, whose critical films called negative come first (the figure's title says so).
        title: the figure's title (default ``Misclassified films``).
    """
    plt = _pyplot()

    if not entries:
        return
    cols = min(4, len(entries))
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows + 0.5), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption, critical_to_normal) in zip(axes.flat, entries):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7, color="tab:red" if critical_to_normal else "black")
    shown = f"{len(entries)} of {wrong}" if wrong > len(entries) else f"all {wrong}"
    first = (
        "most confident first"
        if classes.negative is None
        else f"{and_join(classes.critical)} called {classes.negative} first"
    )
    fig.suptitle(f"{title or 'Misclassified films'}: {shown}, {first}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(
    path: Path, history: Sequence[Dict[str, Any]], kept_epoch: Optional[int] = None, kept_rule: str = "best"
) -> None:
    """Save loss and accuracy per epoch, training (augmented) and validation, marking the kept epoch
    (``kept_rule``: which one was kept, e.g. ``best`` or ``last``)."""
    plt = _pyplot()

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    from matplotlib.ticker import MaxNLocator  # matplotlib loads only when a figure is drawn

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="grey", ls="--", lw=1, label=f"kept ({kept_rule})")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
