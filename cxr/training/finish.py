"""The end of a training run: the kept model (read back from ``model/``) scored on training (un-augmented), validation
and test, its temperature, operating point and out-of-distribution guard fitted and saved into ``model/``, and every
part's calibrated predictions and ``metrics.json``'s dict returned (:func:`evaluate_kept`).

:func:`finish` takes the held-out predictions to choose on (:func:`held_out_for`,
:class:`~cxr.training.held_out.HeldOut`: the run's validation part, or a cross-validation of the recipe carried into
the run) and the run's own validation and test logits (for the report), and returns a :class:`Finished`: the
temperature, what it was fitted on and the calibration error before and after it on validation, test and the held-out
films (each with the error a calibrated model would show on that many films by chance,
:func:`~cxr.metrics.stats.ece_if_calibrated`: on a 60-film test split about 0.05, so a single run's test ECE says
little), and the operating point — "Normal only when P(Normal) ≥ t", the lowest t whose finite-sample guarantee
(``--guarantee``) on the share of the held-out critical films called negative is at most ``max_missed_rate``
(:mod:`cxr.metrics.operating_point`, :mod:`cxr.metrics.guarantee`). :func:`score_parts` scores every part and fits the out-of-distribution guard on the model's features
and records what it flags. Only :func:`evaluate_kept` writes files.

A temperature is the minimiser of the held-out NLL (Guo et al. 2017). Held-out films the model classifies without
an error cannot identify one (the NLL keeps falling towards certainty): then the targets are smoothed by the rule
of succession (one error's worth of doubt among n + 2), which gives a finite temperature, and the record says so.
Research use only — not for diagnosis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file

from cxr.errors import CXRError
from cxr.labels import Classes
from cxr.metrics.guarantee import DEFAULT_CONFIDENCE, DEFAULT_GUARANTEE
from cxr.metrics.operating_point import OperatingPoint, choose_operating_point, decision_metrics
from cxr.metrics.stats import (
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature_to_logits,
    softmax_with_temperature,
)
from cxr.models.checkpoint import set_model_operating_point, set_model_temperature
from cxr.models.ood import OODGuard, capture_features, probe_images, reference_choice, reference_limit
from cxr.run_folder import RunFolder
from cxr.training.build import TrainSetup
from cxr.training.config import Recipe
from cxr.training.epochs import Progress, split_metrics
from cxr.training.evaluation import Outputs, predict_outputs, softmax
from cxr.training.held_out import HeldOut, bundled_for, from_cv, from_logits, from_predictions
from cxr.training.run_data import Refit, RunData

__all__ = ["Finished", "evaluate_kept", "held_out_for", "finish", "fit_held_out_temperature", "score_parts"]

Part = Tuple[np.ndarray, np.ndarray]  # labels, logits
#: Each part's (index into the part, true classes, calibrated probabilities).
Predictions = Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Finished:
    """The kept model's calibration and decision rule, chosen on held-out predictions: ``temperature`` (1 when not
    calibrating), ``calibration`` (the ``metrics.json`` block, ``None`` without ``--calibrate``) and
    ``operating_point`` (``None`` when the classes have no negative class, or the held-out films no critical film
    to set it on: the model then decides by argmax)."""

    temperature: float
    calibration: Optional[Dict[str, Any]]
    operating_point: Optional[OperatingPoint]


def evaluate_kept(
    cfg: Recipe,
    folder: RunFolder,
    data: RunData,
    setup: TrainSetup,
    progress: Progress,
    run_id: str,
    accelerator: Any,
    refit: Optional[Refit] = None,
) -> Tuple[Dict[str, Any], Predictions]:
    """The kept model (read back from ``model/``) on every part; one temperature (a refit takes its hold-out
    run's: its own validation images were trained on), the operating point and the guard, written into
    ``model/`` (main process) and applied to every probability from here on. Returns the ``metrics.json`` dict and
    each part's calibrated predictions."""
    kept = accelerator.unwrap_model(setup.model)
    kept.load_state_dict(load_file(str(folder.model_weights)))
    # evaluate exactly as cxr.eval and the app will run it (contiguous layout), so their numbers agree
    kept.to(memory_format=torch.contiguous_format)
    outputs, guard, ood = score_parts(data, setup, accelerator, cfg.seed)
    logits = {part: (o.index, o.labels, o.logits) for part, o in outputs.items()}
    held_out = held_out_for(cfg, data, logits["validation"][1:], refit)
    classes = data.classes
    finished = finish(
        held_out,
        logits["validation"][1:],
        logits["test"][1:],
        classes=classes,
        calibrate=cfg.calibrate,
        max_missed_rate=cfg.max_missed_rate,
        guarantee=cfg.guarantee,
        confidence=cfg.confidence,
        fitted=None if refit is None else refit.calibration,
        fitted_from="" if refit is None else f"{refit.holdout.name}/",
    )
    if accelerator.is_main_process:
        _save_into_model_dir(folder, finished, guard)
    _print_finish(finished, ood, accelerator, classes)
    # every probability reported from here on is the calibrated one, computed as cxr.eval and the app compute it
    t = finished.temperature
    predictions = {part: (index, labels, softmax(z, t)) for part, (index, labels, z) in logits.items()}
    metrics = {part: split_metrics(labels, probs, classes) for part, (_, labels, probs) in predictions.items()}
    metrics["decision"] = decision_metrics(*predictions["test"][1:], finished.operating_point, classes)
    metrics["classes"] = classes.to_dict()
    metrics.update(
        kept_epoch=progress.kept_at["epoch"], best_epoch=progress.best["epoch"], keep=cfg.keep, run_id=run_id
    )
    if refit is not None:
        metrics["final_fit"] = {"holdout": refit.holdout.name, "validation_held_out": False}
    if finished.calibration is not None:
        metrics["calibration"] = finished.calibration
    if ood is not None:
        metrics["ood"] = ood
    return metrics, predictions


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
    return from_logits(*validation, f"{len(validation[0])} validation images{why}", data.classes.names)


def finish(
    held_out: HeldOut,
    validation: Part,
    test: Part,
    classes: Classes,
    calibrate: bool,
    max_missed_rate: float,
    guarantee: str = DEFAULT_GUARANTEE,
    confidence: float = DEFAULT_CONFIDENCE,
    fitted: Optional[Dict[str, Any]] = None,
    fitted_from: str = "the hold-out run",
) -> Finished:
    """Choose the temperature and the operating point on ``held_out`` (see the module's docstring).

    Args:
        held_out: the predictions to choose on.
        validation, test: the kept model's own (labels, logits), for the calibration record.
        classes: the model's classes, whose negative and critical classes the operating point serves.
        calibrate: fit a temperature (else T = 1).
        max_missed_rate: the operating point's target.
        guarantee, confidence: the finite-sample guarantee it is chosen with (:mod:`cxr.metrics.guarantee`).

    Raises:
        CXRError: ``held_out`` predicts other classes than ``classes``.
        fitted: a calibration made elsewhere (``--final-fit``'s hold-out run): its temperature is used.
        fitted_from: where ``fitted`` was made, for its note.
    """
    if tuple(held_out.names) != tuple(classes.names):
        raise CXRError(
            f"the held-out predictions to choose on ({held_out.description}) are of the classes "
            f"{', '.join(held_out.names)}; this model's are {', '.join(classes.names)}"
        )
    if not calibrate:
        t, note = 1.0, None
    elif fitted is not None:
        t, note = float(fitted["temperature"]), f"from {fitted_from}: {fitted['note']}"
    else:
        t, note = fit_held_out_temperature(held_out)
    calibration = None
    if calibrate:
        calibration = {"temperature": t, "note": note, "fitted_on": held_out.description}
        for part, (y, z) in (
            ("validation", validation),
            ("test", test),
            ("held_out", (held_out.labels, held_out.logits)),
        ):
            after = softmax_with_temperature(z, t)
            calibration[part] = {
                "ece_before": expected_calibration_error(y, softmax_with_temperature(z)),
                "ece_after": expected_calibration_error(y, after),
                "films": int(len(y)),
                "ece_if_calibrated": ece_if_calibrated(after) if len(y) else None,
            }
    probs = softmax_with_temperature(held_out.logits, t)
    op = choose_operating_point(
        held_out.labels, probs, classes, max_missed_rate, held_out.description, guarantee, confidence
    )
    return Finished(t, calibration, op)


def fit_held_out_temperature(held_out: HeldOut) -> Tuple[float, str]:
    """The temperature for ``held_out`` and how it was fitted (see the module's docstring)."""
    y, z = held_out.labels, held_out.logits
    errors = int((z.argmax(1) != y).sum())
    if errors:
        return fit_temperature_to_logits(y, z), f"fitted on {held_out.description} ({errors} errors among them)"
    smoothing = 1 / (len(y) + 2)
    return (
        fit_temperature_to_logits(y, z, smoothing=smoothing),
        f"fitted on {held_out.description}, which hold no error: targets smoothed by the rule of succession "
        f"({smoothing:.3f})",
    )


def score_parts(
    data: RunData, setup: TrainSetup, accelerator: Any, seed: int
) -> Tuple[Dict[str, Outputs], Optional[OODGuard], Optional[Dict[str, Any]]]:
    """The kept model on every part (training un-augmented, validation, test), its out-of-distribution guard and
    the guard's ``metrics.json`` record (the test images and the probes it flags); no guard and no record for a
    model without a classifier layer to read features from.

    The guard's reference is the features of the training images not in validation (all of them, unless this is a
    refit, which trains on validation too) — at most :func:`~cxr.models.ood.reference_limit` of them (5,000, fewer for
    wide features), a choice seeded by ``seed`` — kept from the same forward as the training predictions; validation
    and test films are scored batch by batch as they pass, so memory does not grow with the number of films. The
    threshold is set on the validation scores; the probes are grey images that are not chest X-rays (one forward,
    first: their features say how wide the guard's are)."""
    to_input, model = setup.eval_input, setup.model
    kept = accelerator.unwrap_model(model).eval()  # the probes must not move batch-norm statistics
    probes = probe_images()  # first: their features say how wide the guard's are
    x = torch.stack([setup.prep.transform(im) for im in probes.values()]).to(accelerator.device)
    with torch.inference_mode(), capture_features(kept) as captured:
        kept(x)
    probe_features = None if captured is None else captured.take().cpu()
    train_rows = np.asarray(data.rows["train"])
    eligible = ~np.isin(train_rows, np.asarray(data.rows["validation"]))
    width = 1 if probe_features is None else probe_features.shape[1]
    keep = reference_choice(eligible, reference_limit(width), seed)
    train = predict_outputs(
        model, setup.loaders["train_eval"], accelerator, to_input, "train (un-augmented)", keep=keep
    )
    if train.features is None:
        outputs = {
            part: predict_outputs(model, setup.loaders[part], accelerator, to_input, part, features=False)
            for part in ("validation", "test")
        }
        return {"train": train, **outputs}, None, None
    guard = OODGuard.from_reference(train.features)
    train = dataclasses.replace(train, features=None)  # the guard holds them now
    val, test = (
        predict_outputs(model, setup.loaders[part], accelerator, to_input, part, score=guard.scores)
        for part in ("validation", "test")
    )
    guard.set_threshold(val.scores)
    probe_flags, test_flags = guard.flags(probe_features), test.scores > guard.threshold
    test_files = [data.file_names[i] for i in np.asarray(data.rows["test"])[test.index]]
    record = {
        "k": guard.k,
        "threshold": round(guard.threshold, 6),
        "reference_images": len(guard.reference),
        "test_flagged": int(test_flags.sum()),
        "test_images": len(test_flags),
        "test_flagged_files": [f for f, flag in zip(test_files, test_flags) if flag],
        "probes_flagged": int(probe_flags.sum()),
        "probes": len(probe_flags),
        "probes_missed": [name for name, flag in zip(probes, probe_flags) if not flag],
    }
    return {"train": train, "validation": val, "test": test}, guard, record


def _save_into_model_dir(folder: RunFolder, finished: Finished, guard: Optional[OODGuard]) -> None:
    """The guard (``model/ood.safetensors``), the temperature and the operating point (``model/config.json``)."""
    if guard is not None:
        guard.save(folder.model_dir)
    if finished.calibration is not None:
        set_model_temperature(folder.model_dir, finished.temperature)
    if finished.operating_point is not None:
        set_model_operating_point(folder.model_dir, finished.operating_point.to_config())


def _print_finish(finished: Finished, ood: Optional[Dict[str, Any]], accelerator: Any, classes: Classes) -> None:
    calibration, op, t = finished.calibration, finished.operating_point, finished.temperature
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
    if classes.negative is None:
        accelerator.print("operating point: none (no negative class): the decision is argmax")
    elif op is None:
        accelerator.print(
            f"operating point: none (no {classes.critical_label} film among the held-out ones): the decision is argmax"
        )
    else:
        accelerator.print(
            f"operating point: {op.rule} ({op.rates['critical_called_normal']}/{op.rates['critical']} "
            f"{classes.critical_label} called {classes.negative} on {op.chosen_on}). {op.guarantee_sentence}"
        )
