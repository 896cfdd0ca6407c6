"""The misclassified test films as pictures: each with its Grad-CAM heat map, true class, decision and P.

:func:`error_entries` picks a run's errors — COVID and Viral Pneumonia films called Normal first (the study's
aim), then the rest by confidence — and computes each one's heat map for the class the model decided, from the
film's cached pixels exactly as the model saw them; :func:`cxr.reporting.run_report.plot_error_gallery` lays them
out. The figure is for local reports: it shows the dataset's films, which a Hub push never uploads.
Research use only — not for diagnosis.
"""

from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, NORMAL
from cxr.models.cam import CamSession, overlay_heatmap

__all__ = ["error_entries", "order_errors", "MAX_ERRORS_SHOWN"]

_logger = logging.getLogger(__name__)

#: At most this many films in the figure (the critical ones first).
MAX_ERRORS_SHOWN = 16

_NORMAL = CLASS_NAMES.index(NORMAL)
_CRITICAL = [CLASS_NAMES.index(c) for c in CRITICAL_CLASSES]


def order_errors(
    labels: np.ndarray, decisions: np.ndarray, probs: np.ndarray, limit: int = MAX_ERRORS_SHOWN
) -> List[int]:
    """Positions of the films decided wrongly: COVID or Viral Pneumonia called Normal first, then the others,
    each group most confident first; at most ``limit``."""
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(decisions))
    confidence = probs[wrong, decisions[wrong]]
    critical = np.isin(labels[wrong], _CRITICAL) & (decisions[wrong] == _NORMAL)
    order = np.lexsort((-confidence, ~critical))  # critical first, then by confidence, highest first
    return [int(i) for i in wrong[order][:limit]]


def error_entries(
    clf, view, names: Sequence[str], labels: np.ndarray, probs: np.ndarray, decisions: np.ndarray
) -> Tuple[List[Tuple[np.ndarray, str, bool]], int, List[str]]:
    """The figure's entries — (heat map over the film, caption, a COVID or Viral Pneumonia film called Normal) —,
    how many films were decided wrongly, and the names of the films shown, in order.

    Args:
        clf: the saved model (:class:`~cxr.models.classifier.CXRClassifier`).
        view: the :class:`~cxr.data.dataset.RadiographDataset` the predictions were made on, in the same order.
        names, labels, probs, decisions: per film of ``view``: file name, true class, calibrated probabilities
            and decided class.
    """

    labels, decisions = np.asarray(labels), np.asarray(decisions)
    chosen = order_errors(labels, decisions, probs)
    entries = []
    with CamSession(clf, "GradCAM") as session:
        for i in chosen:
            row = view.ds[view.indices[i]]
            pixels = np.asarray(row["pixels"], dtype=np.uint8)
            session.probabilities_of_input(view[i]["pixel_values"][None])
            cam = session.heatmap(int(decisions[i]))
            caption = (
                f"{names[i].split('/')[-1]}\ntrue {CLASS_NAMES[labels[i]]} → {CLASS_NAMES[decisions[i]]}\n"
                f"P({CLASS_NAMES[decisions[i]]}) {probs[i, decisions[i]]:.2f}"
            )
            critical = labels[i] in _CRITICAL and decisions[i] == _NORMAL
            entries.append((overlay_heatmap(Image.fromarray(pixels), cam), caption, bool(critical)))
    return entries, int((labels != decisions).sum()), [names[i] for i in chosen]
