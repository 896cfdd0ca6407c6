"""The end-of-training stage: the kept model's temperature, operating point and out-of-distribution guard.

:func:`finish` takes the held-out predictions to choose on (:class:`~cxr.training.held_out.HeldOut`: the run's
validation part, or a cross-validation of the recipe carried into the run) and the run's own validation and
test logits (for the report), and returns a :class:`Finished`: the temperature, what it was fitted on and the
calibration error before and after it on validation, test and the held-out films (each with the error a calibrated
model would show on that many films by chance, :func:`~cxr.metrics.stats.ece_if_calibrated`: on a 60-film test
split about 0.05, so a single run's test ECE says little), and the operating point —
"Normal only when P(Normal) ≥ t", the lowest t at which at most ``max_missed_rate`` of the held-out COVID + Viral
Pneumonia films are called Normal (:mod:`cxr.metrics.operating_point`) — and, from the model's features
(:class:`GuardInputs`), the out-of-distribution guard with what it flags. Nothing here writes files.

A temperature is the minimiser of the held-out NLL (Guo et al. 2017). Held-out films the model classifies without
an error cannot identify one (the NLL keeps falling towards certainty): then the targets are smoothed by the rule
of succession (one error's worth of doubt among n + 2), which gives a finite temperature, and the record says so.
Research use only — not for diagnosis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cxr.metrics.operating_point import OperatingPoint, choose_threshold, operating_rates
from cxr.metrics.stats import (
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature_to_logits,
    softmax_with_temperature,
)
from cxr.models.ood import OODGuard
from cxr.training.held_out import HeldOut

__all__ = ["Finished", "GuardInputs", "finish", "fit_guard", "fit_held_out_temperature"]

Part = Tuple[np.ndarray, np.ndarray]  # labels, logits


@dataclasses.dataclass(frozen=True)
class Finished:
    """What the end-of-training stage decided: ``temperature`` (1 when not calibrating), ``calibration`` (the
    ``metrics.json`` block, ``None`` without ``--calibrate``) and ``operating_point`` (``None`` when the held-out
    films hold no COVID or Viral Pneumonia film to set it on: the model then decides by argmax)."""

    temperature: float
    calibration: Optional[Dict[str, Any]]
    operating_point: Optional[OperatingPoint]
    guard: Any = None  # the out-of-distribution guard (:class:`cxr.models.ood.OODGuard`), None without features
    ood: Optional[Dict[str, Any]] = None  # what metrics.json records of it


@dataclasses.dataclass(frozen=True)
class GuardInputs:
    """The kept model's features (:func:`cxr.models.ood.capture_features`) the guard is fitted and measured on:
    every training image (the reference), those of them not in validation (a refit trains on validation too), the
    validation and test images, and grey images that are not chest X-rays (``probes``, by name)."""

    reference: np.ndarray
    fit_on: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    test_files: Sequence[str]
    probes: Any  # features of the probes (a tensor, as the model gives them)
    probe_names: Sequence[str]


def fit_guard(inputs: GuardInputs) -> Tuple[Any, Dict[str, Any]]:
    """The out-of-distribution guard — threshold set on validation — and its record: the test images and the
    probes it flags."""

    guard = OODGuard.fit(inputs.fit_on, inputs.validation, reference=inputs.reference)
    probe_flags, test_flags = guard.flags(inputs.probes), guard.flags(inputs.test)
    record = {
        "k": guard.k,
        "threshold": round(guard.threshold, 6),
        "test_flagged": int(test_flags.sum()),
        "test_images": len(test_flags),
        "test_flagged_files": [f for f, flag in zip(inputs.test_files, test_flags) if flag],
        "probes_flagged": int(probe_flags.sum()),
        "probes": len(probe_flags),
        "probes_missed": [name for name, flag in zip(inputs.probe_names, probe_flags) if not flag],
    }
    return guard, record


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


def finish(
    held_out: HeldOut,
    validation: Part,
    test: Part,
    calibrate: bool,
    max_missed_rate: float,
    fitted: Optional[Dict[str, Any]] = None,
    fitted_from: str = "the hold-out run",
    guard: Optional[GuardInputs] = None,
) -> Finished:
    """Choose the temperature and the operating point on ``held_out`` (see the module's docstring).

    Args:
        held_out: the predictions to choose on.
        validation, test: the kept model's own (labels, logits), for the calibration record.
        calibrate: fit a temperature (else T = 1).
        max_missed_rate: the operating point's target.
        fitted: a calibration made elsewhere (``--final-fit``'s hold-out run): its temperature is used.
        fitted_from: where ``fitted`` was made, for its note.
        guard: the features to fit the out-of-distribution guard on (:func:`fit_guard`); ``None``: no guard.
    """
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
    fitted_guard, ood = fit_guard(guard) if guard is not None else (None, None)
    probs = softmax_with_temperature(held_out.logits, t)
    try:
        threshold = choose_threshold(held_out.labels, probs, max_missed_rate)
    except ValueError:  # no COVID or Viral Pneumonia film held out: nothing to set a threshold on
        return Finished(t, calibration, None, fitted_guard, ood)
    rates = operating_rates(held_out.labels, probs, threshold)
    op = OperatingPoint(threshold, max_missed_rate, held_out.description, rates)
    return Finished(t, calibration, op, fitted_guard, ood)
