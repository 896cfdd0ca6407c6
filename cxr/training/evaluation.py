"""Batched prediction under Accelerate and the files an evaluation writes.

:func:`predict` runs a model over a prepared loader and gathers with ``gather_for_metrics``, so
under N processes every image is counted exactly once. :func:`write_evaluation` writes
``metrics.json``, ``predictions.csv``, ``report.md`` and ``confusion_matrix.png``.
``python -m cxr.eval`` (any model folder or Hub id on any folder in the Kaggle layout, every image a test image)
is :func:`cxr.training.eval_folder.evaluate_folder`, built on these two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from cxr.metrics.operating_point import OperatingPoint
from cxr.models.classifier import temperature_softmax
from cxr.models.ood import capture_features
from cxr.reporting.plots import plot_confusion_matrix, plot_error_gallery, plot_operating_point
from cxr.reporting.run_report import write_report
from cxr.run_folder import RunFolder, write_json, write_predictions

__all__ = [
    "Outputs",
    "predict_outputs",
    "predict_logits",
    "predict",
    "write_evaluation",
]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Outputs:
    """A model's outputs over a loader, one row per image, sorted by index: ``index``, ``labels``, ``logits``
    (float32) and the guard's ``features`` (float32, :func:`cxr.models.ood.capture_features`; ``None`` when not
    recorded or for a model that has neither feature stages nor a classifier layer)."""

    index: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    features: Optional[np.ndarray]


@torch.inference_mode()
def predict_outputs(
    model: torch.nn.Module, loader, accelerator, desc: str = "evaluating", features: bool = True
) -> Outputs:
    """Run ``model`` over ``loader`` on every process and gather its logits and the out-of-distribution
    guard's features (from the same forward, :func:`cxr.models.ood.capture_features`) on all of them.

    Args:
        model: a (prepared) model.
        loader: a loader prepared by ``accelerator`` yielding ``pixel_values``, ``labels``, ``index``.
        accelerator: the run's ``Accelerator``.
        desc: progress-bar label (main process only).
        features: record the features (``False``: ``Outputs.features`` is ``None``, no hooks run).

    Returns:
        :class:`Outputs`: each image of the loader's dataset exactly once.
    """

    model.eval()
    parts: List[Tuple[torch.Tensor, ...]] = []
    capturing = capture_features(accelerator.unwrap_model(model)) if features else contextlib.nullcontext()
    with capturing as captured:
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            with accelerator.autocast():
                logits = model(batch["pixel_values"])
            row = (batch["index"], batch["labels"], logits.float())
            if captured is not None:
                row += (captured.take().to(logits.device),)
            parts.append(tuple(t.cpu() for t in accelerator.gather_for_metrics(row)))
    index = torch.cat([p[0] for p in parts]).numpy()
    order = np.argsort(index, kind="stable")
    column = lambda i: torch.cat([p[i] for p in parts]).numpy()[order]  # noqa: E731
    return Outputs(index[order], column(1), column(2), column(3) if captured is not None else None)


def predict_logits(
    model: torch.nn.Module, loader, accelerator, desc: str = "evaluating"
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_outputs` as ``(index, labels, logits)``, without recording features."""
    out = predict_outputs(model, loader, accelerator, desc, features=False)
    return out.index, out.labels, out.logits


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """:func:`cxr.models.classifier.temperature_softmax` of gathered logits (the app's and ``CXRClassifier``'s numbers)."""

    return temperature_softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), temperature).numpy()


def predict(
    model: torch.nn.Module, loader, accelerator, desc: str = "evaluating", temperature: float = 1.0
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_logits`, as probabilities ``softmax(logits / temperature)`` (a saved model's calibration,
    :attr:`CXRClassifier.temperature`)."""
    index, labels, logits = predict_logits(model, loader, accelerator, desc)
    return index, labels, softmax(logits, temperature)


def write_evaluation(
    output_dir: Path,
    model_name: str,
    metrics: Dict[str, Any],
    run_info: Dict[str, Any],
    test_files: Sequence[str],
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    operating_point: Optional[OperatingPoint] = None,
    errors: Optional[Tuple[List[Any], int, List[str]]] = None,
) -> None:
    """Write the run folder's metrics, test predictions (with the decision by ``operating_point``; argmax
    without one), confusion matrix, operating-point plot, the misclassified films (``errors``:
    :func:`cxr.training.error_gallery.error_entries`) and report (:class:`RunFolder`)."""
    run = RunFolder(output_dir)
    decide = None if operating_point is None else operating_point.decide
    write_predictions(run.predictions("test"), test_files, test_labels, test_probs, decide=decide)
    if operating_point is not None:
        plot_operating_point(run.operating_point_plot, test_labels, test_probs, operating_point, "test")
    if errors is not None:
        entries, wrong, shown = errors
        plot_error_gallery(run.errors_plot, entries, wrong, title=f"{model_name}: misclassified test films")
        metrics = {**metrics, "errors_shown": shown}  # the films errors.png shows, in its order
    plot_confusion_matrix(
        run.confusion_matrix,
        metrics["test"]["confusion_matrix"],
        title=f"{model_name}: test confusion matrix (n={metrics['test']['num_images']})",
    )
    write_report(run.report, model_name, metrics, run_info)
    write_json(run.metrics, metrics)  # last: a run folder with metrics.json is finished (RunFolder.is_finished)
