"""The end of a training run: the kept model evaluated on training (un-augmented), validation and test; its
temperature, operating point and out-of-distribution guard fitted (:func:`cxr.training.finish.finish`) and saved
into ``model/``; every part's calibrated predictions and ``metrics.json``'s dict returned."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file

from cxr.metrics.operating_point import decision_metrics
from cxr.models.checkpoint import set_model_operating_point, set_model_temperature
from cxr.models.ood import capture_features, probe_images
from cxr.run_folder import RunFolder
from cxr.training.build import TrainSetup
from cxr.training.config import Recipe
from cxr.training.epochs import Progress, split_metrics
from cxr.training.evaluation import Outputs, predict_outputs, softmax
from cxr.training.finish import Finished, GuardInputs, finish
from cxr.training.held_out import HeldOut, bundled_for, from_cv, from_logits, from_predictions
from cxr.training.run_data import Refit, RunData

__all__ = ["Results", "evaluate_kept", "held_out_for"]

#: Each part's (index into the part, true classes, calibrated probabilities).
Predictions = Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Results:
    """What a finished run reports: the ``metrics.json`` dict and each part's calibrated predictions."""

    metrics: Dict[str, Any]
    predictions: Predictions


def evaluate_kept(
    cfg: Recipe,
    folder: RunFolder,
    data: RunData,
    setup: TrainSetup,
    progress: Progress,
    run_id: str,
    accelerator: Any,
    refit: Optional[Refit] = None,
) -> Results:
    """The kept model (read back from ``model/``) on every part; one temperature (a refit takes its hold-out
    run's: its own validation images were trained on), the operating point and the guard, written into
    ``model/`` (main process) and applied to every probability from here on."""
    kept = accelerator.unwrap_model(setup.model)
    kept.load_state_dict(load_file(str(folder.model_weights)))
    # evaluate exactly as cxr.eval and the app will run it (contiguous layout), so their numbers agree
    kept.to(memory_format=torch.contiguous_format)
    parts = {"train": "train (un-augmented)", "validation": "validation", "test": "test"}
    outputs = {
        part: predict_outputs(setup.model, setup.loaders["train_eval" if part == "train" else part], accelerator, desc)
        for part, desc in parts.items()
    }
    logits = {part: (o.index, o.labels, o.logits) for part, o in outputs.items()}
    finished = finish(
        held_out_for(cfg, data, logits["validation"][1:], refit),
        logits["validation"][1:],
        logits["test"][1:],
        calibrate=cfg.calibrate,
        max_missed_rate=cfg.max_missed_rate,
        fitted=None if refit is None else refit.calibration,
        fitted_from="" if refit is None else f"{refit.holdout.name}/",
        guard=_guard_inputs(data, setup, outputs, accelerator),
    )
    if accelerator.is_main_process:
        _save_into_model_dir(folder, finished)
    _print_finish(finished, accelerator)
    # every probability reported from here on is the calibrated one, computed as cxr.eval and the app compute it
    t = finished.temperature
    predictions = {part: (index, labels, softmax(z, t)) for part, (index, labels, z) in logits.items()}
    metrics = {part: split_metrics(labels, probs) for part, (_, labels, probs) in predictions.items()}
    metrics["decision"] = decision_metrics(*predictions["test"][1:], finished.operating_point)
    metrics.update(
        kept_epoch=progress.kept_at["epoch"], best_epoch=progress.best["epoch"], keep=cfg.keep, run_id=run_id
    )
    if refit is not None:
        metrics["final_fit"] = {"holdout": refit.holdout.name, "validation_held_out": False}
    if finished.calibration is not None:
        metrics["calibration"] = finished.calibration
    if finished.ood is not None:
        metrics["ood"] = finished.ood
    return Results(metrics, predictions)


def _save_into_model_dir(folder: RunFolder, finished: Finished) -> None:
    """The guard (``model/ood.safetensors``), the temperature and the operating point (``model/config.json``)."""
    if finished.guard is not None:
        finished.guard.save(folder.model_dir)
    if finished.calibration is not None:
        set_model_temperature(folder.model_dir, finished.temperature)
    if finished.operating_point is not None:
        set_model_operating_point(folder.model_dir, finished.operating_point.to_config())


def _print_finish(finished: Finished, accelerator: Any) -> None:
    ood, calibration, op, t = finished.ood, finished.calibration, finished.operating_point, finished.temperature
    if ood is not None:
        accelerator.print(
            f"out-of-distribution guard: test {ood['test_flagged']}/{ood['test_images']} flagged, "
            f"non-radiographs {ood['probes_flagged']}/{ood['probes']} flagged"
        )
    if calibration is not None:
        accelerator.print(
            f"temperature {t:.3f} ({calibration['note']}); ECE validation "
            f"{calibration['validation']['ece_before']:.3f} -> {calibration['validation']['ece_after']:.3f}, "
            f"test {calibration['test']['ece_before']:.3f} -> {calibration['test']['ece_after']:.3f}"
        )
    accelerator.print(
        "operating point: none (no COVID or Viral Pneumonia film among the held-out ones): the decision is argmax"
        if op is None
        else f"operating point: {op.rule} ({op.rates['critical_called_normal']}/{op.rates['critical']} "
        f"COVID + Viral Pneumonia called Normal on {op.chosen_on})"
    )


def held_out_for(
    cfg: Recipe, data: RunData, validation: Tuple[np.ndarray, np.ndarray], refit: Optional[Refit]
) -> HeldOut:
    """What the temperature and the operating point are chosen on (``--choose-on``): a cross-validation's
    out-of-fold predictions (``auto``: the bundled ones of the default recipe, when, and only when, this run is that
    recipe on the very films they were made on, by name and content), or the run's own validation images (a refit's
    were trained on: its hold-out run's validation predictions then). The description, which the run's records
    keep, says which, and for ``auto`` why."""
    test_films = data.files("test")
    why = ""
    if cfg.choose_on == "auto":
        carried, why = bundled_for(cfg.to_dict(), data.pix)
        if carried is not None:
            return carried.without(test_films, "of this run's test films")
        why = f" (--choose-on auto: {why})"
    elif cfg.choose_on != "validation":
        return from_cv(cfg.choose_on).without(test_films, "of this run's test films")
    if refit is not None:
        hold = RunFolder(refit.holdout)
        t = (refit.calibration or {}).get("temperature") or 1.0
        return from_predictions(
            hold.predictions("validation"), t, f"the hold-out run's validation images ({refit.holdout.name}/){why}"
        )
    return from_logits(*validation, f"{len(validation[0])} validation images{why}")


def _guard_inputs(
    data: RunData, setup: TrainSetup, outputs: Dict[str, Outputs], accelerator: Any
) -> Optional[GuardInputs]:
    """The kept model's features for :func:`cxr.training.finish.fit_guard`: its training, validation and test
    images' (from the evaluation forwards) and grey images that are not chest X-rays' (one forward here);
    ``None`` for a model without a classifier layer to read features from."""
    train, val, test = outputs["train"], outputs["validation"], outputs["test"]
    if train.features is None:
        return None
    # an output's index is a position in its own part: the dataset rows say which image it is
    rows = {part: np.asarray(data.rows[part])[o.index] for part, o in outputs.items()}
    others = ~np.isin(rows["train"], rows["validation"])  # all of them, unless this is a refit
    kept = accelerator.unwrap_model(setup.model)
    probes = probe_images()
    x = torch.stack([setup.prep.transform(im) for im in probes.values()]).to(accelerator.device)
    with torch.inference_mode(), capture_features(kept) as captured:
        kept(x)
    return GuardInputs(
        reference=train.features,
        fit_on=train.features[others],
        validation=val.features,
        test=test.features,
        test_files=[data.file_names[i] for i in rows["test"]],
        probes=captured.take().cpu(),
        probe_names=list(probes),
    )
