"""Held-out predictions a temperature and an operating point are chosen on.

A run's own validation part is small (about 60 films of the sample, half of them COVID or Viral Pneumonia): it
cannot set a 1% rate, and when it holds no error it cannot identify a temperature. A cross-validation of the same
recipe (``python -m cxr.cv``) scores every film once, by a model that never saw it: :func:`from_cv` reads those
out-of-fold predictions back as logits (``T_k log p`` of each fold's calibrated probabilities; a softmax does not
change when a constant is added), so a run can carry them into its model. Research use only — not for diagnosis.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from cxr.data.content import content_digests
from cxr.errors import CXRError
from cxr.run_folder import CVFolder, check_format, class_columns, read_json, read_predictions
from cxr.training.config import RECIPE_KEYS

__all__ = ["HeldOut", "from_cv", "from_logits", "from_predictions", "bundled_for", "bundle_from_cv", "BUNDLED"]

#: The default recipe's out-of-fold logits on the sample, shipped with cxr (``--choose-on auto``; how they were
#: made is in the file's ``what``; experiments/RESULTS.md "Where the temperature and the operating point come from").
BUNDLED = Path(__file__).parent / "recipes" / "default_out_of_fold.json"
#: Recipe settings that do not make another recipe (the folds and the initialisation differ, the recipe does not).
_NOT_RECIPE = ("seed",)

#: Probabilities are written with six decimals: a zero is at most this.
_SMALLEST_WRITTEN = 5e-7


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Films none of the models scoring them trained on: true class, logits, what they are (in words, for
    reports: "600 out-of-fold predictions of runs/cv (5 folds)") and the class names of the labels and logits."""

    labels: np.ndarray
    logits: np.ndarray
    description: str
    names: Tuple[str, ...]
    files: Optional[Sequence[str]] = None  # the films' names, when known

    def __len__(self) -> int:
        return len(self.labels)

    def without(self, files: Sequence[str], why: str) -> "HeldOut":
        """These predictions less those of ``files`` (a run's own test films: its test figures stay independent
        of what was chosen here); ``why`` names them in the description."""
        if self.files is None:
            return self
        drop = set(files)
        keep = np.array([f not in drop for f in self.files], dtype=bool)
        if keep.all():
            return self
        return HeldOut(
            self.labels[keep],
            self.logits[keep],
            f"{self.description}, less {int((~keep).sum())} {why} ({int(keep.sum())} films)",
            self.names,
            [f for f, k in zip(self.files, keep) if k],
        )


def from_logits(labels: np.ndarray, logits: np.ndarray, description: str, names: Sequence[str]) -> HeldOut:
    return HeldOut(np.asarray(labels, dtype=np.int64), np.asarray(logits, dtype=np.float64), description, tuple(names))


def from_predictions(path: Union[str, Path], temperature: float, description: str) -> HeldOut:
    """A predictions file (:func:`cxr.run_folder.write_predictions`) written with ``temperature``, as logits."""
    pred = read_predictions(path)
    return HeldOut(pred.y, _as_logits(pred.probs, temperature), description, pred.names)


def _as_logits(probs: np.ndarray, temperature) -> np.ndarray:
    """Logits up to a per-row constant from probabilities written with ``temperature`` (scalar or per row)."""
    return temperature * np.log(np.clip(probs, _SMALLEST_WRITTEN, None))


def from_cv(cv_dir: Union[str, Path]) -> HeldOut:
    """The out-of-fold predictions of a finished ``python -m cxr.cv`` run, as logits.

    Raises:
        CXRError: not a finished cross-validation folder, or one of another format.
    """

    cv = CVFolder(cv_dir)
    if not cv.is_finished():
        raise CXRError(f"{cv_dir}: not a finished cross-validation (no {cv.oof.name} and {cv.summary.name} there)")
    check_format(read_json(cv.folds).get("format_version"), f"the cross-validation in {cv_dir}")
    temperatures = {int(f["fold"]): float(f.get("temperature") or 1.0) for f in read_json(cv.summary)["per_fold"]}
    with open(cv.oof, newline="") as f:
        reader = csv.DictReader(f)
        names = class_columns(reader.fieldnames or [])
        rows = list(reader)
    labels = np.array([names.index(r["label"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows], dtype=np.float64)
    t = np.array([temperatures[int(r["fold"])] for r in rows])[:, None]
    logits = _as_logits(probs, t)
    description = f"{len(rows)} out-of-fold predictions of {cv_dir} ({len(temperatures)} folds)"
    return HeldOut(labels, logits, description, names, [r["file_name"] for r in rows])


def bundled_for(recipe: Dict[str, Any], films: Any, path: Union[str, Path] = BUNDLED) -> Tuple[Optional[HeldOut], str]:
    """The bundled out-of-fold predictions (``path``, default :data:`BUNDLED`) when, and only when, ``recipe`` (a
    run's resolved settings) is the recipe they were made with and the run's films (``films``: its dataset, with
    ``file_name`` and ``image`` columns) are the films they were made on, by name and then by content
    (:func:`cxr.data.content.content_digests`, read only when the names agree).

    Returns:
        ``(held-out predictions or None, why)``: ``why`` says, for the run's record, why they were or were not used.
    """
    bundle = json.loads(Path(path).read_text())
    same = all(recipe.get(k) == v for k, v in bundle["recipe"].items() if k not in _NOT_RECIPE)
    if not same:
        return None, "this run's recipe is not the one the bundled out-of-fold predictions were made with"
    made_on = bundle["content"]
    if set(films["file_name"]) != set(made_on):
        return (
            None,
            f"this run's films are not the {len(made_on)} films the bundled out-of-fold predictions were made on",
        )
    digests = content_digests(films)
    changed = sum(digests[name] != digest for name, digest in made_on.items())
    if changed:
        return None, (
            f"this run's films have the names of the {len(made_on)} films the bundled out-of-fold predictions were "
            f"made on, but {changed} of them other content"
        )
    held = HeldOut(
        np.asarray(bundle["labels"], dtype=np.int64),
        np.asarray(bundle["logits"], dtype=np.float64),
        f"{bundle['images']} out-of-fold predictions of the {bundle['preset']} recipe's {bundle['folds']}-fold "
        f"cross-validation on these {len(made_on)} films (names and content), shipped with cxr",
        tuple(bundle["classes"]),
        bundle["files"],
    )
    return held, "this run's recipe and films (names and content) are the bundled out-of-fold predictions'"


def bundle_from_cv(cv_dir: Union[str, Path], what: str) -> Dict[str, Any]:
    """The contents of a bundle (:data:`BUNDLED`) made from a finished cross-validation on the sample: its recipe
    (:data:`cxr.training.config.RECIPE_KEYS`), the out-of-fold logits (five decimals), true classes, file names and
    content digests (from the CV's ``folds.json``) — no pixels.
    ``what`` says how it was made (the command, the commit), for the file's reader.

    Raises:
        CXRError: not a finished cross-validation folder, or one without content digests.
    """
    held = from_cv(cv_dir)
    cv = CVFolder(cv_dir)
    summary, content = read_json(cv.summary), read_json(cv.folds).get("content")
    if not content or set(content) != set(held.files):
        raise CXRError(f"{cv_dir}: its {cv.folds.name} names no content digest for each film; run the CV again")
    recipe = summary["recipe"]
    return {
        "what": what,
        "images": len(held),
        "folds": len(summary["per_fold"]),
        "recipe": {k: recipe[k] for k in RECIPE_KEYS},
        "preset": recipe.get("preset", "default"),
        "classes": list(held.names),
        "labels": [int(v) for v in held.labels],
        "logits": np.round(held.logits, 5).tolist(),
        "files": list(held.files),
        "content": {name: content[name] for name in held.files},
    }
