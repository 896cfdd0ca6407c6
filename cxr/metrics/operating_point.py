"""The study's decision rule: a film is called Normal only when its calibrated P(Normal) reaches a threshold.

The study's first aim is the fewest COVID and Viral Pneumonia films called Normal; argmax does not serve it.
:class:`OperatingPoint` holds the rule — "Normal only when P(Normal) ≥ t, else the most probable other class"
(torchxrayvision keeps such thresholds as ``op_threshs``) — with the target it was chosen for and what it was
chosen on. :func:`choose_threshold` picks the lowest threshold whose share of COVID + Viral Pneumonia films
called Normal, on held-out predictions, is at most the target: the lowest, because every step up sends more
Normal films to be looked at again. :func:`threshold_curve` gives both rates over the thresholds (the report's
plot). Probabilities here are calibrated ones (after the model's temperature), in :data:`~cxr.labels.CLASS_NAMES`
order.

Example:
    >>> import numpy as np
    >>> p = np.array([[0.30, 0.0, 0.70, 0.0], [0.05, 0.0, 0.95, 0.0]])
    >>> OperatingPoint(0.9).decide(p).tolist()   # the first is not Normal enough: its likeliest other class
    [0, 2]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, NORMAL
from cxr.metrics import compute_metrics

__all__ = [
    "OperatingPoint",
    "DEFAULT_MAX_MISSED_RATE",
    "decide",
    "operating_rates",
    "choose_threshold",
    "threshold_curve",
    "check_missed_rate",
    "decision_metrics",
    "ARGMAX_RULE",
]

#: ``--max-missed-rate``: at most this share of COVID + Viral Pneumonia films called Normal, on held-out
#: predictions.
DEFAULT_MAX_MISSED_RATE = 0.01

#: The decision rule of a model saved without an operating point (no critical film among its held-out films, or
#: a model folder made by other code).
ARGMAX_RULE = "the most probable class (the model was saved without an operating point)"

_NORMAL = CLASS_NAMES.index(NORMAL)
_CRITICAL = [CLASS_NAMES.index(c) for c in CRITICAL_CLASSES]
#: Thresholds are rounded up to this grid, so the rule reads as a plain number ("0.912").
_GRID = 1000


def check_missed_rate(rate: float) -> float:
    """``rate`` when it is a share a threshold can meet (0 ≤ rate < 1), else ``ValueError`` with a sentence."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 <= rate < 1):
        raise ValueError(
            f"the largest share of COVID + Viral Pneumonia films called Normal must be at least 0 and below 1 "
            f"(e.g. 0.01 for 1%), got {rate!r}"
        )
    return float(rate)


def decide(probabilities: np.ndarray, normal_threshold: Optional[float]) -> np.ndarray:
    """Class indices by the rule: Normal when P(Normal) ≥ ``normal_threshold``, else the most probable other
    class; argmax when ``normal_threshold`` is ``None`` (a model saved without an operating point)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if normal_threshold is None:
        return p.argmax(axis=1)
    others = p.copy()
    others[:, _NORMAL] = -np.inf
    return np.where(p[:, _NORMAL] >= normal_threshold, _NORMAL, others.argmax(axis=1))


def operating_rates(labels: Sequence[int], probabilities: np.ndarray, normal_threshold: float) -> Dict[str, Any]:
    """At ``normal_threshold``: the COVID + Viral Pneumonia films called Normal (count, of how many, share) and
    the Normal films kept Normal (count, of how many, share)."""
    y = np.asarray(labels)
    called_normal = decide(probabilities, normal_threshold) == _NORMAL
    critical, normal = np.isin(y, _CRITICAL), y == _NORMAL
    missed, kept = int((called_normal & critical).sum()), int((called_normal & normal).sum())
    return {
        "critical_called_normal": missed,
        "critical": int(critical.sum()),
        "missed_rate": missed / max(int(critical.sum()), 1),
        "normal_kept": kept,
        "normal": int(normal.sum()),
        "normal_kept_rate": kept / max(int(normal.sum()), 1),
    }


def choose_threshold(labels: Sequence[int], probabilities: np.ndarray, max_missed_rate: float) -> float:
    """The lowest threshold (on a grid of 0.001) at which at most ``max_missed_rate`` of the COVID + Viral
    Pneumonia films among ``labels`` have P(Normal) at or above it.

    Raises:
        ValueError: no COVID or Viral Pneumonia film to choose on, or the rate out of range.
    """
    check_missed_rate(max_missed_rate)
    y, p = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    scores = np.sort(p[np.isin(y, _CRITICAL), _NORMAL])[::-1]  # highest P(Normal) first
    if scores.size == 0:
        raise ValueError("no COVID or Viral Pneumonia film among the held-out predictions to choose a threshold on")
    allowed = int(math.floor(max_missed_rate * scores.size + 1e-9))
    if allowed >= scores.size:
        return 0.0
    first_refused = float(scores[allowed])  # the (allowed+1)-th highest must fall below the threshold
    threshold = round(math.ceil(first_refused * _GRID) / _GRID, 3)
    if threshold <= first_refused:  # the next grid value strictly above it
        threshold = round(threshold + 1 / _GRID, 3)
    return min(threshold, 1.0)


def threshold_curve(
    labels: Sequence[int], probabilities: np.ndarray, thresholds: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, share of COVID + Viral Pneumonia films called Normal, share of Normal films flagged — not
    kept Normal) over ``thresholds`` (default 0 to 1 by 0.005)."""
    t = np.linspace(0, 1, 201) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    rates = [operating_rates(labels, probabilities, float(v)) for v in t]
    return t, np.array([r["missed_rate"] for r in rates]), np.array([1 - r["normal_kept_rate"] for r in rates])


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A model's decision rule.

    Attributes:
        normal_threshold: Normal only when the calibrated P(Normal) is at least this.
        max_missed_rate: the target it was chosen for (share of COVID + Viral Pneumonia called Normal).
        chosen_on: what held-out predictions chose it, in words.
        rates: :func:`operating_rates` on those predictions.
    """

    normal_threshold: float
    max_missed_rate: Optional[float] = None
    chosen_on: str = ""
    rates: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def rule(self) -> str:
        """The rule in words, as the app and the reports show it."""
        return f"Normal only when P(Normal) ≥ {self.normal_threshold:.3f}"

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """:func:`decide` at this threshold."""
        return decide(probabilities, self.normal_threshold)

    def to_config(self) -> Dict[str, Any]:
        """The ``cxr.operating_point`` entry of a model's ``config.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, entry: Optional[Dict[str, Any]]) -> Optional["OperatingPoint"]:
        """The operating point saved in ``config.json``, or ``None`` for a model saved without one."""
        if not entry:
            return None
        threshold = float(entry["normal_threshold"])
        if not 0 <= threshold <= 1:
            raise ValueError(f"the saved operating point's threshold {threshold} is not a probability")
        return cls(threshold, entry.get("max_missed_rate"), entry.get("chosen_on", ""), dict(entry.get("rates", {})))


def decision_metrics(
    labels: Sequence[int], probabilities: np.ndarray, operating_point: Optional[OperatingPoint]
) -> Dict[str, Any]:
    """``metrics.json``'s ``decision`` block: the rule, what chose it, and every figure of
    :func:`cxr.metrics.compute_metrics` for the decisions it makes on these probabilities (rounded as
    predictions files write them, so the files reproduce it); for a model without an operating point, argmax's."""

    written = np.round(np.asarray(probabilities, dtype=np.float64), 6)
    threshold = None if operating_point is None else operating_point.normal_threshold
    block: Dict[str, Any] = {"rule": ARGMAX_RULE if operating_point is None else operating_point.rule}
    if operating_point is not None:
        block.update(
            normal_threshold=threshold,
            max_missed_rate=operating_point.max_missed_rate,
            chosen_on=operating_point.chosen_on,
            rates_where_chosen=operating_point.rates,
            rates=operating_rates(labels, written, threshold),
        )
    block.update(compute_metrics(labels, written, predictions=decide(written, threshold)))
    return block
