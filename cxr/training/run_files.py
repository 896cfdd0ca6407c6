"""What a training run writes into its run folder, one function per record: ``split.json`` and
``run_config.json`` at the start, ``model/`` when an epoch is kept, ``checkpoint.pt`` after every epoch, and at
the end ``history.json``, the curves, every part's predictions, ``metrics.json`` and the report. Main process
only; the file names are :class:`cxr.run_folder.RunFolder`'s."""

from __future__ import annotations

import logging
import platform
from typing import Any, Dict, Tuple

import numpy as np
import torch

from cxr.data.dataset import RadiographDataset
from cxr.data.splits import DEFAULT_FRACTIONS, SPLITS, save_split
from cxr.labels import DISCLAIMER, Classes
from cxr.models.checkpoint import capture_rng_state, recover_model_dir, save_model_dir, save_training_state
from cxr.reporting.plots import plot_training_curves
from cxr.reporting.run_facts import training_run_facts
from cxr.run_folder import FORMAT_VERSION, RunFolder, write_json, write_predictions
from cxr.training.build import TrainSetup
from cxr.training.config import Recipe
from cxr.training.epochs import Progress
from cxr.training.evaluation import error_entries, write_evaluation
from cxr.training.run_data import RunData

__all__ = ["write_run_config", "save_kept", "save_checkpoint", "write_results", "versions"]

_logger = logging.getLogger(__name__)


def versions() -> Dict[str, str]:
    """The versions of what trained the model, for ``run_config.json``."""
    import accelerate  # imported here only to read their versions
    import datasets
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }


def write_run_config(
    folder: RunFolder,
    cfg: Recipe,
    data: RunData,
    setup: TrainSetup,
    run_id: str,
    accelerator: Any,
    micro_batch: int,
) -> Dict[str, Any]:
    """``split.json`` and ``run_config.json`` (a model save interrupted by the last run's end is restored first);
    returns the ``run_config.json`` dict."""
    run_config = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        **setup.model_info,
        "run_id": run_id,
        "micro_batch_per_process": micro_batch,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "mixed_precision": accelerator.mixed_precision,
        "images": {part: len(data.rows[part]) for part in SPLITS},
        "data_source": data.source,
        "skipped_unreadable_images": data.skipped,
        "versions": versions(),
    }
    folder.root.mkdir(parents=True, exist_ok=True)
    if recover_model_dir(folder.model_dir):
        _logger.warning("restored %s from a save interrupted by the last run's end", folder.model_dir)
    # the shares actually used, where the data's own splits set them (not the 80/10/10 asked for)
    total = sum(map(len, data.rows.values()))
    fractions = tuple(round(len(data.rows[p]) / total, 4) for p in SPLITS) if data.given_splits else DEFAULT_FRACTIONS
    save_split(folder.split, data.split, cfg.seed, fractions, content=data.content)
    write_json(folder.run_config, run_config)
    return run_config


def save_kept(
    folder: RunFolder, setup: TrainSetup, cfg: Recipe, run_id: str, epoch: int, accelerator, classes: Classes
) -> None:
    """``model/``: the kept model of ``epoch`` with its preprocessing, its classes and what it is."""
    info = {k: v for k, v in setup.model_info.items() if k not in ("preprocessing", "first_trainable_parameter")}
    info.update(run_id=run_id, data=cfg.data, seed=cfg.seed, epochs=cfg.epochs, disclaimer=DISCLAIMER, epoch=epoch)
    info["ema"] = setup.ema is not None
    save_model_dir(setup.kept_model(accelerator), folder.model_dir, setup.prep, info, screening=classes)


def save_checkpoint(
    folder: RunFolder, setup: TrainSetup, progress: Progress, data: RunData, cfg: Recipe, run_id: str, accelerator
) -> None:
    """``checkpoint.pt``: everything a resumed run continues from (written atomically)."""
    state = {
        "model": accelerator.unwrap_model(setup.model).state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "rng": capture_rng_state(),
        "epoch": progress.epochs_done,
        "history": list(progress.history),
        "best": progress.best,
        "kept": progress.kept_at,
        "split": data.split,
        "data_source": data.source,
        "config": cfg.to_dict(),
        "run_id": run_id,
    }
    if setup.ema is not None:
        state["ema"] = setup.ema.module.state_dict()
    save_training_state(folder.checkpoint, state)


def write_results(
    folder: RunFolder,
    run_config: Dict[str, Any],
    data: RunData,
    prep: Any,
    progress: Progress,
    metrics: Dict[str, Any],
    predictions: Dict[str, Tuple[np.ndarray, ...]],
    final_fit: bool,
) -> None:
    """``history.json``, ``training_curves.png``, every part's predictions, ``metrics.json``, the report and its
    figures, with the model as saved (loaded as ``cxr.eval`` and the app load it)."""
    from cxr.models.classifier import CXRClassifier  # the saved model's own loader: the same decision as cxr.eval

    keep, kept_epoch = run_config["config"]["keep"], progress.kept_at["epoch"]
    history = {"kept_epoch": kept_epoch, "best_epoch": progress.best["epoch"], "keep": keep}
    write_json(folder.history, {**history, "epochs": list(progress.history)})
    rule = "last, final fit" if final_fit else keep
    plot_training_curves(folder.training_curves, list(progress.history), kept_epoch=kept_epoch, kept_rule=rule)
    files = {part: [data.file_names[data.rows[part][i]] for i in index] for part, (index, _, _) in predictions.items()}
    kept = CXRClassifier.from_pretrained(folder.model_dir)
    for part in ("validation", "train"):
        write_predictions(
            folder.predictions(part),
            files[part],
            *predictions[part][1:],
            class_names=kept.label_names,
            decide=kept.decide,
        )
    facts = training_run_facts(run_config, metrics, folder.split.name)
    _, labels, probs = predictions["test"]
    test_view = RadiographDataset(data.pix, prep, data.rows["test"])  # positions = the predictions' sorted index
    errors = error_entries(
        kept, test_view, files["test"], labels, probs, kept.decide(np.round(probs, 6)), classes=kept.classes
    )
    model = run_config["config"]["model"]
    write_evaluation(
        folder.root, model, metrics, facts, files["test"], labels, probs, kept.classes, kept.operating_point, errors
    )
