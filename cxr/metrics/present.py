"""Figures over the classes a set holds: what external validation can measure.

A set from another hospital rarely holds all of a model's classes (130 Normal films; Normal and COVID films of a second
source). Over the classes present this gives, each with a stratified bootstrap 95% interval: the accuracy, each
class's recall, what each class was called (counts over all the model's classes), and the films of each class called
negative (Normal) — for the argmax and for a decision rule alike (pass its predictions) — and the same per source when the
films' sources are known. Classes a set does not hold get no figure, never a zero.

Example:
    >>> from cxr.labels import DATABASE
    >>> y = np.array([2, 2, 2, 0]); pred = np.array([2, 0, 2, 2])
    >>> m = present_metrics(y, pred, DATABASE, n_resamples=10)
    >>> m["classes"], m["accuracy"]["value"], m["per_class"]["COVID"]["called"]["Normal"]
    (['COVID', 'Normal'], 0.5, 1)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from cxr.labels import Classes
from cxr.metrics.stats import accuracy_of, recall_of, stratified_bootstrap_intervals

__all__ = ["present_metrics", "present_metrics_by_source"]


def _interval(value: float, low: float, high: float) -> Dict[str, float]:
    return {"value": value, "low": low, "high": high}


def present_metrics(
    y: Sequence[int], pred: Sequence[int], classes: Classes, n_resamples: int = 1000, seed: int = 0
) -> Dict[str, Any]:
    """The figures of the module docstring for true classes ``y`` and predicted classes ``pred``.

    Returns:
        ``classes`` (present, in our order), ``images``, ``accuracy`` (``value``/``low``/``high``), ``per_class``
        (per present class: ``images``, ``recall`` with its interval, ``called``: ``{class: count}``),
        ``to_normal`` (per present class other than the negative: its films called negative) and
        ``critical_to_normal`` (critical films called negative), and ``bootstrap_resamples``.
    """
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("no films to measure")
    names = classes.names
    present = [k for k in range(len(names)) if (y == k).any()]

    def stats(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
        out = {"accuracy": accuracy_of(a, b)}
        out.update({f"recall/{k}": recall_of(k)(a, b) for k in present})
        return out

    ci = stratified_bootstrap_intervals(y, pred, stats, n_resamples=n_resamples, seed=seed)
    normal = classes.negative_index
    per_class = {}
    for k in present:
        mask = y == k
        per_class[names[k]] = {
            "images": int(mask.sum()),
            "recall": _interval(*ci[f"recall/{k}"]),
            "called": {c: int((pred[mask] == j).sum()) for j, c in enumerate(names)},
        }
    to_normal = (
        {} if normal is None else {names[k]: int((pred[y == k] == normal).sum()) for k in present if k != normal}
    )
    return {
        "classes": [names[k] for k in present],
        "images": int(len(y)),
        "accuracy": _interval(*ci["accuracy"]),
        "per_class": per_class,
        "to_normal": to_normal,
        "critical_to_normal": int(sum(v for c, v in to_normal.items() if c in classes.critical)),
        "bootstrap_resamples": n_resamples,
    }


def present_metrics_by_source(
    y: Sequence[int],
    pred: Sequence[int],
    sources: Sequence[Optional[str]],
    classes: Classes,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Dict[str, Dict[str, Any]]:
    """:func:`present_metrics` for the films of each source (``None`` or ``""``: ``"unknown"``), by source name."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    names = np.array([s or "unknown" for s in sources], dtype=object)
    return {
        str(s): present_metrics(y[names == s], pred[names == s], classes, n_resamples, seed)
        for s in sorted(set(names.tolist()))
    }
