"""Batched prediction under Accelerate and the files an evaluation writes.

:func:`predict` runs a model over a prepared loader and gathers with ``gather_for_metrics``, so
under N processes every image is counted exactly once. :func:`write_evaluation` writes
``metrics.json``, ``predictions.csv``, ``report.md`` and ``confusion_matrix.png``;
:func:`evaluate_folder` is ``python -m cxr.eval``: any model folder or Hub id on any folder in
the Kaggle layout, every image a test image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from cxr.data.labelling import Labelling
from cxr.labels import DISCLAIMER
from cxr.metrics import compute_metrics
from cxr.metrics.operating_point import OperatingPoint, decision_metrics
from cxr.metrics.present import present_metrics, present_metrics_by_source
from cxr.metrics.shift import shift_summary
from cxr.reporting.plots import plot_confusion_matrix, plot_error_gallery, plot_operating_point
from cxr.reporting.run_facts import shift_description
from cxr.reporting.run_report import write_report
from cxr.run_folder import RunFolder, write_json, write_predictions

__all__ = [
    "Outputs",
    "predict_outputs",
    "predict_logits",
    "predict",
    "write_evaluation",
    "evaluate_folder",
    "classes_present_block",
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
    from cxr.models.ood import capture_features

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
    from cxr.models.classifier import temperature_softmax

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


def classes_present_block(
    labels: np.ndarray,
    probs: np.ndarray,
    decide: Callable[[np.ndarray], np.ndarray],
    sources: Optional[Sequence[Optional[str]]] = None,
) -> Dict[str, Any]:
    """``metrics.json``'s ``classes_present``: :func:`cxr.metrics.present.present_metrics` for the argmax and for
    the decision (of the probabilities as written), and per source (``by_source``) when ``sources`` are known."""
    written = np.round(np.asarray(probs, dtype=np.float64), 6)
    predicted = {"argmax": written.argmax(axis=1), "decision": np.asarray(decide(written))}
    block: Dict[str, Any] = {rule: present_metrics(labels, pred) for rule, pred in predicted.items()}
    if sources is not None:
        block["by_source"] = {
            rule: present_metrics_by_source(labels, pred, sources) for rule, pred in predicted.items()
        }
    return block


def evaluate_folder(
    model_ref: str,
    data: str,
    output_dir: Path,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: Optional[str] = None,
    skip_bad_images: bool = False,
    dataset_revision: Optional[str] = None,
    dataset_config: Optional[str] = None,
    labelling: Optional[Labelling] = None,
) -> Dict[str, Any]:
    """Evaluate a checkpoint on every image of a dataset, every split of it (``python -m cxr.eval``).

    Args:
        model_ref: model folder or Hub repository id.
        data: folder in the Kaggle layout, or a dataset id (see :func:`cxr.data.dataset.load_radiographs`).
        output_dir: where the evaluation files go (created).
        batch_size: images per forward pass and process.
        num_workers: loader worker processes.
        cache_dir: resized-pixel cache folder.
        skip_bad_images: skip undecodable images instead of failing.
        dataset_revision: branch, tag or commit of a Hub dataset.
        dataset_config: the dataset's configuration name.
        labelling: which classes the data must hold and how its names map onto ours (default: any of ours,
            under our names).

    Returns:
        The ``metrics.json`` dict (``{"test": {...}}``; ``classes_present``: :func:`classes_present_block`).
    """
    from accelerate import Accelerator

    from cxr.data.dataset import RadiographDataset, cache_pixels, check_data_options, load_data_source
    from cxr.models.classifier import CXRClassifier
    from cxr.training.error_gallery import error_entries

    check_data_options(data, dataset_revision, dataset_config)
    run = RunFolder(Path(model_ref).parent)
    if Path(model_ref).is_dir() and run.model_dir == Path(model_ref) and run.run_config.is_file():
        run.check_one_run()  # a run's model/ folder: its records must all be of that one run
    accelerator = Accelerator()
    clf = CXRClassifier.from_pretrained(model_ref)
    model, prep = clf.model, clf.preprocess
    with accelerator.main_process_first():
        source = load_data_source(data, dataset_revision, dataset_config, labelling or Labelling(partial=True))
        cached = cache_pixels(
            source.dataset, prep.image_size, cache_dir=cache_dir, skip_bad_images=skip_bad_images, clahe=prep.clahe
        )
    view = RadiographDataset(cached.dataset, prep)
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model, loader = accelerator.prepare(model, loader)
    out = predict_outputs(model, loader, accelerator, desc="cxr.eval")
    index, labels, probs = out.index, out.labels, softmax(out.logits, clf.temperature)
    metrics = {"test": compute_metrics(labels, probs), "decision": decision_metrics(labels, probs, clf.operating_point)}
    names = list(cached.dataset["file_name"])  # one read of the column, not one per row
    film_sources = None if source.sources is None else [source.sources.get(names[i]) for i in index]
    metrics["classes_present"] = classes_present_block(labels, probs, clf.decide, film_sources)
    metrics["evaluated"] = {  # what was scored, for the model card's external validation (cxr.hub push --eval-dir)
        "data": str(data),
        "revision": source.info.get("revision"),
        "model": str(model_ref),
        "run_id": (clf.config.get("cxr") or {}).get("run_id"),
        "images": int(len(labels)),
    }
    if clf.ood is not None and out.features is not None:
        scores = clf.ood.scores(out.features)
        flags = scores > clf.ood.threshold
        metrics["ood"] = {
            "flagged": int(flags.sum()),
            "images": len(flags),
            "flagged_files": [names[i] for i in index[flags]],
        }
        if clf.ood.validation_scores is not None:
            metrics["shift"] = shift_summary(scores, clf.ood.validation_scores)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        model_name = clf.name
        run_info = {
            "model": str(model_ref),
            "data": f"{data}{' @ ' + source.info['revision'] if source.info['kind'] == 'hub' else ''}"
            f"{', config ' + source.info['config'] if source.info.get('config') else ''} "
            f"({len(view)} images, every one a test image)",
            "preprocessing": f"grey{', CLAHE' if prep.clahe else ''}, {prep.image_size}px, {prep.in_chans} channel(s), norm {prep.norm} "
            f"mean {list(prep.mean)} std {list(prep.std)}",
            "skipped unreadable images": len(cached.bad),
            "out-of-distribution guard": (
                "none (the model was saved without one)"
                if "ood" not in metrics
                else f"{metrics['ood']['flagged']} of {metrics['ood']['images']} images flagged as unlike the "
                "chest X-rays the model was trained on (listed in metrics.json)"
            ),
            "dataset shift": shift_description(metrics.get("shift"), clf.ood is not None),
            "note": DISCLAIMER,
        }
        files = [names[i] for i in index]
        decisions = clf.decide(np.round(probs, 6))
        errors = error_entries(clf, view, files, labels, probs, decisions)  # index is 0..n-1: view's order
        write_evaluation(output_dir, model_name, metrics, run_info, files, labels, probs, clf.operating_point, errors)
    accelerator.wait_for_everyone()
    return metrics
