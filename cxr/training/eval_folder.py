"""``python -m cxr.eval``: a saved checkpoint on every image of a folder or dataset — all four classes, or any of
them (external validation) — scored as the app scores one film, with every figure over the classes present, per
source when the films' sources are known, and the dataset-shift summary of the guard's distances."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch

from cxr.data.data_source import check_data_options, load_data_source
from cxr.data.dataset import RadiographDataset
from cxr.data.labelling import Labelling
from cxr.data.pixel_cache import cache_pixels
from cxr.metrics import compute_metrics
from cxr.metrics.operating_point import decision_metrics
from cxr.metrics.present import present_metrics, present_metrics_by_source
from cxr.metrics.shift import shift_summary
from cxr.reporting.run_facts import eval_run_facts
from cxr.run_folder import RunFolder
from cxr.training.evaluation import Outputs, predict_outputs, softmax, write_evaluation

__all__ = ["evaluate_folder", "classes_present_block"]


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
        data: folder in the Kaggle layout, or a dataset id (see :func:`cxr.data.data_source.load_radiographs`).
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
    from accelerate import Accelerator  # accelerate loads only when an evaluation starts

    from cxr.models.classifier import CXRClassifier  # the model layer loads after the data flags are checked

    check_data_options(data, dataset_revision, dataset_config)
    _check_run_records(model_ref)
    accelerator = Accelerator()
    clf = CXRClassifier.from_pretrained(model_ref)
    prep = clf.preprocess
    with accelerator.main_process_first():
        source = load_data_source(data, dataset_revision, dataset_config, labelling or Labelling(partial=True))
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
        has_guard = clf.ood is not None
        facts = eval_run_facts(
            str(model_ref), str(data), source.info, len(view), prep.to_dict(), len(cached.bad), metrics, has_guard
        )
        _write(output_dir, clf, view, out, names, metrics, facts)
    accelerator.wait_for_everyone()
    return metrics


def _metrics(clf: Any, out: Outputs, names: Sequence[str], sources: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """``metrics.json`` of an evaluation: ``test`` and ``decision``, ``classes_present`` (per source when known),
    and with a guard, the films it flags (``ood``) and the dataset shift against validation (``shift``)."""
    index, labels, probs = out.index, out.labels, softmax(out.logits, clf.temperature)
    metrics = {"test": compute_metrics(labels, probs), "decision": decision_metrics(labels, probs, clf.operating_point)}
    film_sources = None if sources is None else [sources.get(names[i]) for i in index]
    metrics["classes_present"] = classes_present_block(labels, probs, clf.decide, film_sources)
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
    return metrics


def _write(
    output_dir: Path, clf: Any, view: RadiographDataset, out: Outputs, names: Sequence[str], metrics, facts
) -> None:
    """The evaluation folder: metrics, predictions, report and its figures (the error gallery included)."""
    from cxr.training.error_gallery import error_entries  # grad-cam loads only when the gallery is drawn

    probs = softmax(out.logits, clf.temperature)
    files = [names[i] for i in out.index]
    errors = error_entries(clf, view, files, out.labels, probs, clf.decide(np.round(probs, 6)))  # view's order
    output_dir.mkdir(parents=True, exist_ok=True)
    write_evaluation(output_dir, clf.name, metrics, facts, files, out.labels, probs, clf.operating_point, errors)


def _check_run_records(model_ref: str) -> None:
    """A run's ``model/`` folder: its records must all be of that one run (a Hub id or a bare folder: nothing)."""
    run = RunFolder(Path(model_ref).parent)
    if Path(model_ref).is_dir() and run.model_dir == Path(model_ref) and run.run_config.is_file():
        run.check_one_run()


def _predict(clf: Any, view: RadiographDataset, batch_size: int, num_workers: int, accelerator: Any) -> Outputs:
    """Every film of ``view`` through the model, in order, over every process."""
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model, loader = accelerator.prepare(clf.model, loader)
    return predict_outputs(model, loader, accelerator, desc="cxr.eval")


def _evaluated(model_ref: str, data: str, source: Dict[str, Any], clf: Any, images: int) -> Dict[str, Any]:
    """``metrics.json``'s ``evaluated``: the data (and its revision), the model and its run id, the films scored."""
    run_id = (clf.config.get("cxr") or {}).get("run_id")
    return dict(data=str(data), revision=source.get("revision"), model=str(model_ref), run_id=run_id, images=images)
