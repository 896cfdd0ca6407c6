"""Scoring a model: batched prediction under Accelerate, the files an evaluation writes, the error gallery, and
``python -m cxr.eval``.

:func:`predict_outputs` (and :func:`predict`) runs a model over a prepared loader and gathers with
``gather_for_metrics``, so under N processes every image is counted exactly once. :func:`write_evaluation` writes
``metrics.json``, ``predictions.csv``, ``report.md``, ``confusion_matrix.png``, ``operating_point.png`` and
``errors.png``.

The error gallery: :func:`error_entries` picks the misclassified test films — the model's critical films called its
negative class first (the study's aim: COVID and Viral Pneumonia called Normal), then the rest by confidence — and
computes each one's Grad-CAM heat map for the class the model decided, from the film's cached pixels exactly as the
model saw them;
:func:`cxr.reporting.plots.plot_error_gallery` lays them out with their true class, decision and P. The figure is for
local reports: it shows the dataset's films, which a Hub push never uploads.

``python -m cxr.eval`` is :func:`evaluate_folder`: a saved checkpoint (any model folder or Hub id) on every image of
a folder or dataset — all the model's classes, or any of them (external validation), every image a test image — scored as
the app scores one film, with every figure over the classes present, per source when the films' sources are known,
and the dataset-shift summary of the guard's distances. Research use only — not for diagnosis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cxr.allocator import release_before_workers
from cxr.data.data_source import check_data_options, load_data_source
from cxr.data.dataset import ModelInput, RadiographDataset
from cxr.data.labelling import Labelling
from cxr.data.pixel_cache import cache_pixels
from cxr.labels import Classes
from cxr.metrics import compute_metrics
from cxr.metrics.operating_point import OperatingPoint, decision_metrics
from cxr.metrics.present import present_metrics, present_metrics_by_source
from cxr.metrics.shift import shift_summary
from cxr.models.cam import CamSession, overlay_heatmap
from cxr.models.classifier import temperature_softmax
from cxr.models.ood import capture_features
from cxr.reporting.plots import plot_confusion_matrix, plot_error_gallery, plot_operating_point
from cxr.reporting.run_facts import eval_run_facts
from cxr.reporting.run_report import write_report
from cxr.run_folder import RunFolder, write_json, write_predictions

__all__ = [
    "Outputs",
    "predict_outputs",
    "predict_logits",
    "predict",
    "softmax",
    "write_evaluation",
    "error_entries",
    "order_errors",
    "MAX_ERRORS_SHOWN",
    "evaluate_folder",
    "classes_present_block",
]

_logger = logging.getLogger(__name__)

#: At most this many films in the error gallery (the critical ones first).
MAX_ERRORS_SHOWN = 16


@dataclasses.dataclass
class Outputs:
    """A model's outputs over a loader, one row per image, sorted by index: ``index``, ``labels``, ``logits``
    (float32) and the guard's ``features`` (float32, :func:`cxr.models.ood.capture_features`; ``None`` when not
    recorded or for a model that has neither feature stages nor a classifier layer) — of every image, or of the
    images at ``feature_index`` only when :func:`predict_outputs` was told which to keep — or, instead of the
    features, each image's guard ``scores``."""

    index: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    features: Optional[np.ndarray]
    feature_index: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None


@torch.inference_mode()
def predict_outputs(
    model: torch.nn.Module,
    loader,
    accelerator,
    to_input: ModelInput,
    desc: str = "evaluating",
    features: bool = True,
    keep: Optional[np.ndarray] = None,
    score: Optional[Callable[[torch.Tensor], np.ndarray]] = None,
) -> Outputs:
    """Run ``model`` over ``loader`` on every process and gather its logits and the out-of-distribution
    guard's features (from the same forward, :func:`cxr.models.ood.capture_features`) on all of them.

    Memory stays bounded by the batch whatever the number of films when ``keep`` or ``score`` is given: the
    features of the films ``keep`` marks are kept (the guard's reference), or each batch's features are reduced to
    the films' guard scores at once.

    Args:
        model: a (prepared) model.
        loader: a loader prepared by ``accelerator`` yielding ``pixels``, ``labels``, ``index``
            (:class:`~cxr.data.dataset.RadiographDataset`).
        accelerator: the run's ``Accelerator``.
        to_input: the model's input of a batch's pixels, made on the device (the checkpoint's normalisation).
        desc: progress-bar label (main process only).
        features: record the features (``False``: ``Outputs.features`` is ``None``, no hooks run).
        keep: a boolean per position of the loader's dataset: keep the features of those marked only, in float16,
            each written into its place as its batch passes (``Outputs.feature_index`` says which, sorted).
        score: keep each film's ``score(features)`` (``Outputs.scores``) instead of its features.

    Returns:
        :class:`Outputs`: each image of the loader's dataset exactly once.
    """

    model.eval()
    # every result goes into arrays made once, at its position: nothing kept per batch splits the heap's free
    # space, so the large per-batch tensors reuse it and memory does not grow with the number of films
    n = len(loader.dataset)
    seen = np.zeros(n, dtype=bool)
    labels = np.zeros(n, dtype=np.int64)
    logits_out: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None  # features or scores
    chosen_rank = None if keep is None else np.cumsum(keep) - 1  # a kept position's row in the buffer
    capturing = capture_features(accelerator.unwrap_model(model)) if features else contextlib.nullcontext()
    release_before_workers(loader)  # the workers forked next share no free heap to be copied as it is reused
    with capturing as captured:
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            with accelerator.autocast():
                logits = model(to_input(batch["pixels"]))
            row = (batch["index"], batch["labels"], logits.float())
            if captured is not None:
                row += (captured.take().to(logits.device),)
            gathered = [t.cpu() for t in accelerator.gather_for_metrics(row)]
            where = gathered[0].numpy()
            seen[where] = True
            labels[where] = gathered[1].numpy()
            if logits_out is None:
                logits_out = np.zeros((n, gathered[2].shape[1]), dtype=np.float32)
            logits_out[where] = gathered[2].numpy()
            if captured is None:
                continue
            feats = gathered[3]
            if score is not None:
                values = np.zeros(n, dtype=np.float32) if values is None else values
                values[where] = np.asarray(score(feats), dtype=np.float32)
            elif keep is not None:
                chosen = np.asarray(keep)[where]
                if values is None:
                    values = np.zeros((int(np.sum(keep)), feats.shape[1]), dtype=np.float16)
                values[chosen_rank[where[chosen]]] = feats[torch.as_tensor(chosen)].numpy()
            else:
                values = np.zeros((n, feats.shape[1]), dtype=np.float32) if values is None else values
                values[where] = feats.numpy()
            del gathered, feats, row, logits
    index = np.flatnonzero(seen)
    width = 0 if logits_out is None else logits_out.shape[1]
    out = Outputs(index, labels[index], (logits_out if logits_out is not None else np.zeros((n, width)))[index], None)
    if captured is None:
        return out
    if keep is not None:
        return dataclasses.replace(out, features=values, feature_index=np.flatnonzero(keep))
    if score is not None:
        return dataclasses.replace(out, scores=None if values is None else values[index])
    return dataclasses.replace(out, features=None if values is None else values[index])


def predict_logits(
    model: torch.nn.Module, loader, accelerator, to_input: ModelInput, desc: str = "evaluating"
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_outputs` as ``(index, labels, logits)``, without recording features."""
    out = predict_outputs(model, loader, accelerator, to_input, desc, features=False)
    return out.index, out.labels, out.logits


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """:func:`cxr.models.classifier.temperature_softmax` of gathered logits (the app's and ``CXRClassifier``'s numbers)."""

    return temperature_softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), temperature).numpy()


def predict(
    model: torch.nn.Module,
    loader,
    accelerator,
    to_input: ModelInput,
    desc: str = "evaluating",
    temperature: float = 1.0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_logits`, as probabilities ``softmax(logits / temperature)`` (a saved model's calibration,
    :attr:`CXRClassifier.temperature`)."""
    index, labels, logits = predict_logits(model, loader, accelerator, to_input, desc)
    return index, labels, softmax(logits, temperature)


def write_evaluation(
    output_dir: Path,
    model_name: str,
    metrics: Dict[str, Any],
    run_info: Dict[str, Any],
    test_files: Sequence[str],
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    classes: Classes,
    operating_point: Optional[OperatingPoint] = None,
    errors: Optional[Tuple[List[Any], int, List[str]]] = None,
) -> None:
    """Write the run folder's metrics, test predictions (with the decision by ``operating_point``; argmax
    without one), confusion matrix, operating-point plot, the misclassified films (``errors``:
    :func:`error_entries`) and report (:class:`RunFolder`), for a model of ``classes``."""
    run = RunFolder(output_dir)
    decide = None if operating_point is None else operating_point.decide
    metrics = {**metrics, "classes": classes.to_dict()}
    write_predictions(
        run.predictions("test"), test_files, test_labels, test_probs, class_names=classes.names, decide=decide
    )
    if operating_point is not None:
        plot_operating_point(run.operating_point_plot, test_labels, test_probs, operating_point, "test")
    if errors is not None:
        entries, wrong, shown = errors
        plot_error_gallery(run.errors_plot, entries, wrong, classes, title=f"{model_name}: misclassified test films")
        metrics = {**metrics, "errors_shown": shown}  # the films errors.png shows, in its order
    plot_confusion_matrix(
        run.confusion_matrix,
        metrics["test"]["confusion_matrix"],
        classes,
        title=f"{model_name}: test confusion matrix (n={metrics['test']['num_images']})",
    )
    write_report(run.report, model_name, metrics, run_info, classes=classes)
    write_json(run.metrics, metrics)  # last: a run folder with metrics.json is finished (RunFolder.is_finished)


def order_errors(
    labels: np.ndarray, decisions: np.ndarray, probs: np.ndarray, classes: Classes, limit: int = MAX_ERRORS_SHOWN
) -> List[int]:
    """Positions of the films decided wrongly: critical films called the negative class first (COVID or Viral
    Pneumonia called Normal; none without a negative class), then the others, each group most confident first; at
    most ``limit``."""
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(decisions))
    confidence = probs[wrong, decisions[wrong]]
    critical = _critical_called_negative(labels[wrong], decisions[wrong], classes)
    order = np.lexsort((-confidence, ~critical))  # critical first, then by confidence, highest first
    return [int(i) for i in wrong[order][:limit]]


def _critical_called_negative(labels: np.ndarray, decisions: np.ndarray, classes: Classes) -> np.ndarray:
    """Per film: a critical film called the negative class (all false without a negative class)."""
    labels, decisions = np.asarray(labels), np.asarray(decisions)
    if classes.negative_index is None:
        return np.zeros(labels.shape, dtype=bool)
    return np.isin(labels, classes.critical_indices) & (decisions == classes.negative_index)


def error_entries(
    clf, view, names: Sequence[str], labels: np.ndarray, probs: np.ndarray, decisions: np.ndarray, classes: Classes
) -> Tuple[List[Tuple[np.ndarray, str, bool]], int, List[str]]:
    """The figure's entries — (heat map over the film, caption, a critical film called the negative class) —,
    how many films were decided wrongly, and the names of the films shown, in order.

    Args:
        clf: the saved model (:class:`~cxr.models.classifier.CXRClassifier`).
        view: the :class:`~cxr.data.dataset.RadiographDataset` the predictions were made on, in the same order.
        names, labels, probs, decisions: per film of ``view``: file name, true class, calibrated probabilities
            and decided class.
        classes: the model's classes (captions name them; its critical films called negative come first).
    """

    labels, decisions = np.asarray(labels), np.asarray(decisions)
    chosen = order_errors(labels, decisions, probs, classes)
    called = _critical_called_negative(labels, decisions, classes)
    class_names = classes.names
    entries = []
    with CamSession(clf, "GradCAM") as session:
        for i in chosen:
            row = view.ds[view.indices[i]]
            pixels = np.asarray(row["pixels"], dtype=np.uint8)
            session.probabilities_of_input(view.model_input(i))
            cam = session.heatmap(int(decisions[i]))
            caption = (
                f"{names[i].split('/')[-1]}\ntrue {class_names[labels[i]]} → {class_names[decisions[i]]}\n"
                f"P({class_names[decisions[i]]}) {probs[i, decisions[i]]:.2f}"
            )
            entries.append((overlay_heatmap(Image.fromarray(pixels), cam), caption, bool(called[i])))
    return entries, int((labels != decisions).sum()), [names[i] for i in chosen]


def classes_present_block(
    labels: np.ndarray,
    probs: np.ndarray,
    decide: Callable[[np.ndarray], np.ndarray],
    classes: Classes,
    sources: Optional[Sequence[Optional[str]]] = None,
) -> Dict[str, Any]:
    """``metrics.json``'s ``classes_present``: :func:`cxr.metrics.present.present_metrics` for the argmax and for
    the decision (of the probabilities as written), and per source (``by_source``) when ``sources`` are known."""
    written = np.round(np.asarray(probs, dtype=np.float64), 6)
    predicted = {"argmax": written.argmax(axis=1), "decision": np.asarray(decide(written))}
    block: Dict[str, Any] = {rule: present_metrics(labels, pred, classes) for rule, pred in predicted.items()}
    if sources is not None:
        block["by_source"] = {
            rule: present_metrics_by_source(labels, pred, sources, classes) for rule, pred in predicted.items()
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
    label_map: Sequence[str] = (),
) -> Dict[str, Any]:
    """Evaluate a checkpoint on every image of a dataset, every split of it (``python -m cxr.eval``).

    Args:
        model_ref: model folder or Hub repository id.
        data: folder in the Kaggle layout, or a dataset id (see :func:`cxr.data.data_source.load_radiographs`).
        output_dir: where the evaluation files go (created).
        batch_size: images per forward pass and process.
        num_workers: loader worker processes.
        cache_dir: resized-pixel cache folder.
        skip_bad_images: skip undecodable images instead of failing.
        dataset_revision: branch, tag or commit of a Hub dataset.
        dataset_config: the dataset's configuration name.
        label_map: ``--label-map`` values: how the data's class names map onto the model's (a name neither the
            model's nor mapped is refused).

    Returns:
        The ``metrics.json`` dict (``{"test": {...}}``; ``classes_present``: :func:`classes_present_block`).
    """
    from accelerate import Accelerator  # accelerate loads only when an evaluation starts

    from cxr.models.classifier import CXRClassifier  # the model layer loads after the data flags are checked

    check_data_options(data, dataset_revision, dataset_config)
    Labelling.parse(label_map)  # its syntax, before the model loads
    _check_run_records(model_ref)
    accelerator = Accelerator()
    clf = CXRClassifier.from_pretrained(model_ref)
    prep = clf.preprocess
    labelling = Labelling.parse(label_map, classes=clf.classes.names, partial=True)
    with accelerator.main_process_first():
        source = load_data_source(data, dataset_revision, dataset_config, labelling)
        cached = cache_pixels(
            source.dataset, prep.image_size, cache_dir=cache_dir, skip_bad_images=skip_bad_images, clahe=prep.clahe
        )
    view = RadiographDataset(cached.dataset, prep)
    out = _predict(clf, view, batch_size, num_workers, accelerator)
    names = list(cached.dataset["file_name"])  # one read of the column, not one per row
    metrics = _metrics(clf, out, names, source.sources)
    # what was scored, for the model card's external validation (cxr.hub push --eval-dir)
    metrics["evaluated"] = _evaluated(model_ref, data, source.info, clf, len(out.labels))
    if accelerator.is_main_process:
        facts = eval_run_facts(
            str(model_ref), str(data), source.info, len(view), prep.to_dict(), len(cached.bad), metrics
        )
        _write(output_dir, clf, view, out, names, metrics, facts)
    accelerator.wait_for_everyone()
    return metrics


def _metrics(clf: Any, out: Outputs, names: Sequence[str], sources: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """``metrics.json`` of an evaluation: ``test`` and ``decision``, ``classes_present`` (per source when known),
    and with a guard, the films it flags (``ood``) and the dataset shift against validation (``shift``)."""
    index, labels, probs = out.index, out.labels, softmax(out.logits, clf.temperature)
    classes = clf.classes
    metrics = {
        "test": compute_metrics(labels, probs, classes),
        "decision": decision_metrics(labels, probs, clf.operating_point, classes),
    }
    film_sources = None if sources is None else [sources.get(names[i]) for i in index]
    metrics["classes_present"] = classes_present_block(labels, probs, clf.decide, classes, film_sources)
    if clf.ood is not None and out.scores is not None:
        scores = out.scores
        flags = scores > clf.ood.threshold
        metrics["ood"] = {
            "flagged": int(flags.sum()),
            "images": len(flags),
            "flagged_files": [names[i] for i in index[flags]],
        }
        metrics["shift"] = shift_summary(scores, clf.ood.validation_scores)
    return metrics


def _write(
    output_dir: Path, clf: Any, view: RadiographDataset, out: Outputs, names: Sequence[str], metrics, facts
) -> None:
    """The evaluation folder: metrics, predictions, report and its figures (the error gallery included)."""
    probs = softmax(out.logits, clf.temperature)
    files = [names[i] for i in out.index]
    errors = error_entries(clf, view, files, out.labels, probs, clf.decide(np.round(probs, 6)), classes=clf.classes)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_evaluation(
        output_dir, clf.name, metrics, facts, files, out.labels, probs, clf.classes, clf.operating_point, errors
    )


def _check_run_records(model_ref: str) -> None:
    """A run's ``model/`` folder: its records must all be of that one run (a Hub id or a bare folder: nothing)."""
    run = RunFolder(Path(model_ref).parent)
    if Path(model_ref).is_dir() and run.model_dir == Path(model_ref) and run.run_config.is_file():
        run.check_one_run()


def _predict(clf: Any, view: RadiographDataset, batch_size: int, num_workers: int, accelerator: Any) -> Outputs:
    """Every film of ``view`` through the model, in order, over every process."""
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model, loader = accelerator.prepare(clf.model, loader)
    score = clf.ood.scores if clf.ood is not None else None  # each batch's features reduced to scores at once
    return predict_outputs(
        model, loader, accelerator, ModelInput(clf.preprocess), "cxr.eval", score is not None, score=score
    )


def _evaluated(model_ref: str, data: str, source: Dict[str, Any], clf: Any, images: int) -> Dict[str, Any]:
    """``metrics.json``'s ``evaluated``: the data (and its revision), the model and its run id, the films scored."""
    run_id = (clf.config.get("cxr") or {}).get("run_id")
    return dict(data=str(data), revision=source.get("revision"), model=str(model_ref), run_id=run_id, images=images)
