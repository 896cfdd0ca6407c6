"""Classification metrics through ``evaluate``, from the module shipped in this folder.

``evaluate.load("accuracy")`` needs the Hub; the ``cxr_classification`` module beside this file is
loaded by path instead, so metrics work offline and are versioned with the code.

Example:
    >>> import numpy as np
    >>> from cxr.labels import DATABASE
    >>> m = compute_metrics([0, 2], np.array([[.7, .1, .1, .1], [.1, .1, .1, .7]]), DATABASE)
    >>> m["accuracy"], m["to_normal"]["COVID"]
    (0.5, 0)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cxr.labels import Classes

__all__ = ["METRIC_MODULE", "load_metric", "compute_metrics", "critical_to_normal", "selection_key"]

#: Folder of the ``evaluate`` module, loadable with ``evaluate.load(str(METRIC_MODULE))``.
METRIC_MODULE = Path(__file__).parent / "cxr_classification"


@functools.lru_cache(maxsize=1)
def load_metric():
    """Load the shipped ``cxr_classification`` metric module with ``evaluate`` (by path, offline)."""
    import evaluate  # evaluate and its metric module load on the first metric computed

    return evaluate.load(str(METRIC_MODULE))


def compute_metrics(
    references: Sequence[int],
    probabilities: np.ndarray,
    classes: Classes,
    predictions: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """Every figure the reports need, from true labels and predicted probabilities.

    Args:
        references: true class index per image.
        probabilities: ``N x K`` class probabilities; the prediction is their argmax unless ``predictions``
            is given.
        classes: the model's classes (names in index order, the negative and critical ones).
        predictions: the predicted class index per image, when a decision rule other than argmax made them
            (:mod:`cxr.metrics.operating_point`); the AUROC still comes from ``probabilities``.

    Returns:
        ``accuracy``, ``per_class``, ``confusion_matrix``, ``to_normal``, ``auroc``,
        ``auroc_per_class``, ``num_images`` and ``critical_to_normal`` (critical films predicted as the negative
        class, the study's primary aim; ``to_normal`` counts each class's films predicted negative).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    result = load_metric().compute(
        predictions=(probs.argmax(axis=1) if predictions is None else np.asarray(predictions)).tolist(),
        references=[int(r) for r in references],
        prediction_scores=probs.tolist(),
        label_names=list(classes.names),
        normal_label=classes.negative,
    )
    result["critical_to_normal"] = critical_to_normal(result, classes)
    return result


def critical_to_normal(metrics: Dict[str, Any], classes: Classes) -> int:
    """Critical images predicted as the negative class (COVID + Viral Pneumonia called Normal)."""
    return int(sum((metrics.get("to_normal") or {}).get(c, 0) for c in classes.critical))


def selection_key(metrics: Dict[str, Any]) -> Tuple[float, int]:
    """Order for choosing the best epoch: higher accuracy, then fewer critical images called negative (the
    ``critical_to_normal`` :func:`compute_metrics` counted with the run's classes)."""
    return (metrics["accuracy"], -int(metrics["critical_to_normal"]))
