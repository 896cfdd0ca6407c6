"""The screening decision: a film is called the negative class (``Normal``) only when its calibrated probability of
it reaches a threshold.

The study's first aim is the fewest critical films (COVID, Viral Pneumonia) called Normal; argmax does not serve it.
The question is a model's :class:`~cxr.labels.Classes`: its negative class and its critical classes.
:class:`OperatingPoint` holds the rule — "negative only when P(negative) ≥ t, else the most probable other class"
(torchxrayvision keeps such thresholds as ``op_threshs``) — with the target it was chosen for, what it was chosen on,
and the finite-sample guarantee it carries there (:mod:`cxr.metrics.guarantee`). :func:`choose_operating_point`
picks the lowest threshold whose guaranteed share of critical films called negative is at most the target: the
lowest, because every step up sends more negative films to be looked at again. :func:`threshold_curve` gives both
rates over the thresholds (the report's plot). Probabilities here are calibrated ones (after the model's
temperature), in the model's class order. ``metrics.json`` and ``config.json`` keep their keys' historical names:
``normal_threshold``, ``critical_called_normal``, ``normal_kept`` mean the negative class's.

Example:
    >>> import numpy as np
    >>> from cxr.labels import DATABASE
    >>> p = np.array([[0.30, 0.0, 0.70, 0.0], [0.05, 0.0, 0.95, 0.0]])
    >>> OperatingPoint(0.9, DATABASE).decide(p).tolist()   # the first is not Normal enough: its likeliest other class
    [0, 2]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cxr.labels import Classes
from cxr.metrics import compute_metrics
from cxr.metrics.guarantee import DEFAULT_CONFIDENCE, DEFAULT_GUARANTEE, Guarantee, guaranteed_threshold

__all__ = [
    "OperatingPoint",
    "DEFAULT_MAX_MISSED_RATE",
    "decide",
    "operating_rates",
    "choose_operating_point",
    "threshold_curve",
    "check_missed_rate",
    "decision_metrics",
    "argmax_rule",
]

#: ``--max-missed-rate``: at most this share of critical films called negative.
DEFAULT_MAX_MISSED_RATE = 0.01


def argmax_rule(classes: Classes) -> str:
    """The decision rule, in words, of a model without an operating point."""
    if classes.negative is None:
        return "the most probable class (no negative class: no screening decision)"
    return "the most probable class (the model was saved without an operating point)"


def check_missed_rate(rate: float, critical: str = "critical", negative: str = "negative") -> float:
    """``rate`` when it is a share a threshold can be chosen for (0 < rate < 1), else ``ValueError`` with a
    sentence."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 < rate < 1):
        raise ValueError(
            f"--max-missed-rate, the largest share of {critical} films called {negative}, must be above 0 and below 1 "
            f"(e.g. 0.01 for 1%), got {rate!r}"
        )
    return float(rate)


def decide(probabilities: np.ndarray, threshold: Optional[float], classes: Classes) -> np.ndarray:
    """Class indices by the rule: the negative class when its probability ≥ ``threshold``, else the most probable
    other class; argmax when ``threshold`` is ``None`` or the classes have no negative."""
    p = np.asarray(probabilities, dtype=np.float64)
    neg = classes.negative_index
    if threshold is None or neg is None:
        return p.argmax(axis=1)
    others = p.copy()
    others[:, neg] = -np.inf
    return np.where(p[:, neg] >= threshold, neg, others.argmax(axis=1))


def operating_rates(
    labels: Sequence[int], probabilities: np.ndarray, threshold: float, classes: Classes
) -> Dict[str, Any]:
    """At ``threshold``: the critical films called negative (count, of how many, share) and the negative films
    kept negative (count, of how many, share)."""
    y = np.asarray(labels)
    called = decide(probabilities, threshold, classes) == classes.negative_index
    critical, negative = np.isin(y, classes.critical_indices), y == classes.negative_index
    missed, kept = int((called & critical).sum()), int((called & negative).sum())
    return {
        "critical_called_normal": missed,
        "critical": int(critical.sum()),
        "missed_rate": missed / max(int(critical.sum()), 1),
        "normal_kept": kept,
        "normal": int(negative.sum()),
        "normal_kept_rate": kept / max(int(negative.sum()), 1),
    }


def threshold_curve(
    labels: Sequence[int], probabilities: np.ndarray, classes: Classes, thresholds: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, share of critical films called negative, share of negative films flagged — not kept) over
    ``thresholds`` (default 0 to 1 by 0.005)."""
    t = np.linspace(0, 1, 201) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    rates = [operating_rates(labels, probabilities, float(v), classes) for v in t]
    return t, np.array([r["missed_rate"] for r in rates]), np.array([1 - r["normal_kept_rate"] for r in rates])


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A model's decision rule.

    Attributes:
        normal_threshold: the negative class only when its calibrated probability is at least this.
        classes: the model's classes, whose negative and critical classes the rule serves.
        max_missed_rate: the target it was chosen for (share of critical films called negative).
        chosen_on: what held-out predictions chose it, in words.
        rates: :func:`operating_rates` on those predictions.
        guarantee: what it guarantees there (``None`` for a point saved before guarantees were recorded).
    """

    normal_threshold: float
    classes: Classes
    max_missed_rate: Optional[float] = None
    chosen_on: str = ""
    rates: Dict[str, Any] = dataclasses.field(default_factory=dict)
    guarantee: Optional[Guarantee] = None

    @property
    def rule(self) -> str:
        """The rule in words, as the app and the reports show it."""
        neg = self.classes.negative
        return f"{neg} only when P({neg}) ≥ {self.normal_threshold:.3f}"

    @property
    def guarantee_sentence(self) -> str:
        """What the point guarantees, in one sentence (or that it records none)."""
        if self.guarantee is None:
            return "No finite-sample guarantee recorded (an empirical threshold)."
        return self.guarantee.sentence(self.classes.negative, self.classes.critical_label)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """:func:`decide` at this threshold."""
        return decide(probabilities, self.normal_threshold, self.classes)

    def to_config(self) -> Dict[str, Any]:
        """The ``cxr.operating_point`` entry of a model's ``config.json``."""
        return {
            "normal_threshold": self.normal_threshold,
            "negative_class": self.classes.negative,
            "critical_classes": list(self.classes.critical),
            "max_missed_rate": self.max_missed_rate,
            "chosen_on": self.chosen_on,
            "rates": self.rates,
            "guarantee": None if self.guarantee is None else self.guarantee.to_config(),
        }

    @classmethod
    def from_config(cls, entry: Optional[Dict[str, Any]], classes: Classes) -> Optional["OperatingPoint"]:
        """The operating point saved in ``config.json`` for a model of ``classes``, or ``None`` for a model saved
        without one (or without a negative class)."""
        if not entry or classes.negative is None:
            return None
        threshold = float(entry["normal_threshold"])
        if not 0 <= threshold <= 1:
            raise ValueError(f"the saved operating point's threshold {threshold} is not a probability")
        return cls(
            threshold,
            classes,
            entry.get("max_missed_rate"),
            entry.get("chosen_on", ""),
            dict(entry.get("rates", {})),
            Guarantee.from_config(entry.get("guarantee")),
        )


def choose_operating_point(
    labels: Sequence[int],
    probabilities: np.ndarray,
    classes: Classes,
    max_missed_rate: float,
    chosen_on: str,
    guarantee: str = DEFAULT_GUARANTEE,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Optional[OperatingPoint]:
    """The operating point for held-out ``labels`` and calibrated ``probabilities``: the lowest threshold whose
    ``guarantee`` on the share of critical films called negative is at most ``max_missed_rate``
    (:func:`cxr.metrics.guarantee.guaranteed_threshold`). ``None`` when the classes have no negative class or the
    films no critical one (the model then decides by argmax).

    Raises:
        ValueError: the rate, guarantee or confidence out of range.
    """
    check_missed_rate(max_missed_rate, classes.critical_label or "critical", classes.negative or "negative")
    if classes.negative is None:
        return None
    y, p = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    scores = p[np.isin(y, classes.critical_indices), classes.negative_index]
    if scores.size == 0:
        return None
    threshold, kept = guaranteed_threshold(scores, max_missed_rate, guarantee, confidence)
    rates = operating_rates(y, p, threshold, classes)
    return OperatingPoint(threshold, classes, max_missed_rate, chosen_on, rates, kept)


def decision_metrics(
    labels: Sequence[int], probabilities: np.ndarray, operating_point: Optional[OperatingPoint], classes: Classes
) -> Dict[str, Any]:
    """``metrics.json``'s ``decision`` block: the rule, what chose it and what it guarantees there, and every figure
    of :func:`cxr.metrics.compute_metrics` for the decisions it makes on these probabilities (rounded as predictions
    files write them, so the files reproduce it); for a model without an operating point, argmax's."""

    written = np.round(np.asarray(probabilities, dtype=np.float64), 6)
    threshold = None if operating_point is None else operating_point.normal_threshold
    block: Dict[str, Any] = {
        "rule": argmax_rule(classes) if operating_point is None else operating_point.rule,
        "negative_class": classes.negative,
        "critical_classes": list(classes.critical),
    }
    if operating_point is not None:
        block.update(
            normal_threshold=threshold,
            max_missed_rate=operating_point.max_missed_rate,
            chosen_on=operating_point.chosen_on,
            rates_where_chosen=operating_point.rates,
            guarantee=None if operating_point.guarantee is None else operating_point.guarantee.to_config(),
            guarantee_sentence=operating_point.guarantee_sentence,
            rates=operating_rates(labels, written, threshold, classes),
        )
    block.update(compute_metrics(labels, written, classes, predictions=decide(written, threshold, classes)))
    return block
