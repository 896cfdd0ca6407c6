"""Held-out predictions a temperature and an operating point are chosen on.

A run's own validation part is small (about 60 films of the sample, half of them COVID or Viral Pneumonia): it
cannot set a 1% rate, and when it holds no error it cannot identify a temperature. A cross-validation of the same
recipe (``python -m cxr.cv``) scores every film once, by a model that never saw it: :func:`from_cv` reads those
out-of-fold predictions back as logits (``T_k log p`` of each fold's calibrated probabilities; a softmax does not
change when a constant is added), so a run can carry them into its model. Research use only — not for diagnosis.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

import numpy as np

from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES
from cxr.run_folder import read_json, read_predictions

__all__ = ["HeldOut", "from_cv", "from_logits", "from_predictions"]

#: Probabilities are written with six decimals: a zero is at most this.
_SMALLEST_WRITTEN = 5e-7


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Films none of the models scoring them trained on: true class, logits, and what they are (in words, for
    reports: "600 out-of-fold predictions of runs/cv (5 folds)")."""

    labels: np.ndarray
    logits: np.ndarray
    description: str

    def __len__(self) -> int:
        return len(self.labels)


def from_logits(labels: np.ndarray, logits: np.ndarray, description: str) -> HeldOut:
    return HeldOut(np.asarray(labels, dtype=np.int64), np.asarray(logits, dtype=np.float64), description)


def from_predictions(path: Union[str, Path], temperature: float, description: str) -> HeldOut:
    """A predictions file (:func:`cxr.run_folder.write_predictions`) written with ``temperature``, as logits."""
    pred = read_predictions(path)
    return HeldOut(pred.y, temperature * np.log(np.clip(pred.probs, _SMALLEST_WRITTEN, None)), description)


def from_cv(cv_dir: Union[str, Path]) -> HeldOut:
    """The out-of-fold predictions of a finished ``python -m cxr.cv`` run, as logits.

    Raises:
        CXRError: not a finished cross-validation folder.
    """
    import csv

    cv_dir = Path(cv_dir)
    oof, summary = cv_dir / "oof_predictions.csv", cv_dir / "cv.json"
    if not (oof.is_file() and summary.is_file()):
        raise CXRError(f"{cv_dir}: not a finished cross-validation (no oof_predictions.csv and cv.json there)")
    temperatures = {int(f["fold"]): float(f.get("temperature") or 1.0) for f in read_json(summary)["per_fold"]}
    with open(oof, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([CLASS_NAMES.index(r["label"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in rows], dtype=np.float64)
    t = np.array([temperatures[int(r["fold"])] for r in rows])[:, None]
    logits = t * np.log(np.clip(probs, _SMALLEST_WRITTEN, None))
    return HeldOut(labels, logits, f"{len(rows)} out-of-fold predictions of {cv_dir} ({len(temperatures)} folds)")
