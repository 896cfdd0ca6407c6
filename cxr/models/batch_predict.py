"""Classify many films with one or more models: ``python -m cxr.predict``'s work.

Each file is decoded once (Grad-CAM images included), through the app's decoder (:func:`cxr.data.decode.read_radiograph`: PNG, JPEG and
DICOM, hostile files refused), in loader workers, and preprocessed for every model as in training; the models
run on batches. Every file gets one row per model — the calibrated probabilities, the argmax ``prediction``, the
``decision`` by the model's saved operating point, whether its out-of-distribution guard flagged the film, and
for a file that cannot be read the reason, the other files going on. Optionally one Grad-CAM image per file and
model (the decided class explained). Research use only — not for diagnosis.

Each model answers in its own classes (:attr:`CXRClassifier.label_names`). The CSV has one ``p_<class>`` column per
class of the models (:func:`csv_classes`): when they all share one class set, its classes in the first model's
output order (four-class models write ``p_COVID,p_Lung_Opacity,p_Normal,p_Viral Pneumonia`` as they always did);
otherwise every class any model has, each once, in first-seen order (models in ``--model`` order, each in its
output order), and a row leaves blank the probability of a class its model does not have. ``prediction`` and
``decision`` name one of the row's own model's classes.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cxr.data.decode import read_radiograph
from cxr.errors import CXRError
from cxr.models.cam import CamSession, overlay_heatmap
from cxr.models.classifier import CXRClassifier

__all__ = ["PredictionRow", "predict_films", "write_rows", "csv_classes", "csv_columns", "CAM_SIDE"]

_logger = logging.getLogger(__name__)

#: Longest side of a written Grad-CAM image.
CAM_SIDE = 512


def csv_classes(classifiers: Sequence[CXRClassifier]) -> List[str]:
    """The classes the CSV has a probability column for: every class of ``classifiers``, each once, in first-seen
    order (one shared class set: its first model's output order)."""
    return list(dict.fromkeys(c for clf in classifiers for c in clf.label_names))


def csv_columns(class_names: Sequence[str]) -> List[str]:
    """The CSV's columns, in order, for probability columns of ``class_names`` (:func:`csv_classes`)."""
    return [
        "file",
        "model",
        "prediction",
        "decision",
        *[f"p_{c}" for c in class_names],
        "out_of_distribution",
        "warnings",
        "error",
    ]


@dataclasses.dataclass
class PredictionRow:
    """One file and one model: probabilities by the model's class names (empty when the file could not be
    read)."""

    file: str
    model: str
    probabilities: Dict[str, float]
    prediction: str = ""
    decision: str = ""
    out_of_distribution: Optional[bool] = None
    warnings: str = ""
    error: str = ""

    def as_csv(self, class_names: Sequence[str]) -> List[str]:
        """The row under :func:`csv_columns` of ``class_names``: blank for a class its model does not have."""
        probs = [f"{self.probabilities[c]:.6f}" if c in self.probabilities else "" for c in class_names]
        ood = "" if self.out_of_distribution is None else str(self.out_of_distribution).lower()
        return [self.file, self.model, self.prediction, self.decision, *probs, ood, self.warnings, self.error]


class _Films(torch.utils.data.Dataset):
    """Each file decoded once and preprocessed for every model; a file that cannot be read gives its reason and
    zero inputs."""

    def __init__(self, files: Sequence[Path], classifiers: Sequence[CXRClassifier], shown: bool = False):
        self.files = list(files)
        self.preps = [c.preprocess for c in classifiers]
        self.shown = shown  # also the film at CAM_SIDE, for its Grad-CAM image (no second decode)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Dict[str, object]:
        item: Dict[str, object] = {"index": i, "error": "", "warnings": ""}
        try:
            image, warnings = read_radiograph(self.files[i])
            item["warnings"] = " ".join(warnings)
            for k, prep in enumerate(self.preps):
                item[f"x{k}"] = prep.transform(image)
            if self.shown:
                shown = image.copy()
                shown.thumbnail((CAM_SIDE, CAM_SIDE), Image.Resampling.BILINEAR)
                item["shown"] = shown
        except CXRError as e:
            item["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the rest
            _logger.warning("%s: %s", self.files[i], e, exc_info=True)
            item["error"] = f"the file could not be read ({type(e).__name__})"
        if item["error"]:
            for k, prep in enumerate(self.preps):
                item[f"x{k}"] = torch.zeros(prep.in_chans, prep.image_size, prep.image_size)
            item.pop("shown", None)
        return item


def _collate(items: List[Dict[str, object]]) -> Dict[str, object]:
    """The default collation, the shown images (of any size) kept as a list (``None`` for unreadable files)."""
    shown = [item.pop("shown", None) for item in items]
    batch = torch.utils.data.default_collate(items)
    batch["shown"] = shown
    return batch


def _cam_name(file: Path, root: Optional[Path]) -> str:
    rel = file.resolve().relative_to(root) if root is not None else Path(file.name)
    return re.sub(r"[^\w.-]+", "_", "__".join(rel.parts)) + ".png"


def _write_cam(
    clf: CXRClassifier, x: torch.Tensor, shown: Image.Image, decided: int, folder: Path, name: str, method: str
) -> None:
    """The Grad-CAM of the decided class for one preprocessed input ``x`` (``1 x C x H x W``) over ``shown``."""

    with CamSession(clf, method) as session:  # its own forward: the map needs the gradients of one
        session.probabilities_of_input(x)
        cam = session.heatmap(decided)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_heatmap(shown, cam)).save(folder / name)


def predict_films(
    classifiers: Sequence[CXRClassifier],
    files: Sequence[Path],
    batch_size: int = 32,
    num_workers: int = 0,
    cam_dir: Optional[Path] = None,
    cam_method: str = "GradCAM",
) -> Iterator[PredictionRow]:
    """Rows for every file and model, file by file in ``files``' order (models in ``classifiers``' order).

    Args:
        classifiers: the loaded models.
        files: the films (:func:`cxr.data.inputs.find_films`).
        batch_size: films per forward.
        num_workers: loader worker processes decoding films.
        cam_dir: when given, one Grad-CAM PNG per file and model in ``cam_dir/<model>/`` (the decided class).
        cam_method: one of :data:`cxr.models.cam.CAM_METHODS`.
    """
    loader = torch.utils.data.DataLoader(
        _Films(files, classifiers, shown=cam_dir is not None),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    root = Path(os.path.commonpath([str(Path(f).resolve().parent) for f in files])) if files else None
    labels = [c.source for c in classifiers]
    with tqdm(total=len(files), desc="cxr.predict", unit="film") as bar:
        for batch in loader:
            ok = np.array([not e for e in batch["error"]])
            results = [_batch_results(clf, batch[f"x{k}"], ok) for k, clf in enumerate(classifiers)]
            for j, i in enumerate(batch["index"].tolist()):
                file, position = Path(files[i]), int(ok[:j].sum())
                for k, clf in enumerate(classifiers):
                    if not ok[j]:
                        yield PredictionRow(str(file), labels[k], {}, error=batch["error"][j])
                        continue
                    row, decided = _row(file, labels[k], clf.label_names, results[k], position, batch["warnings"][j])
                    if cam_dir is not None:
                        slug = re.sub(r"[^\w.-]+", "_", labels[k]).strip("_")
                        x, shown = batch[f"x{k}"][j : j + 1], batch["shown"][j]
                        _write_cam(clf, x, shown, decided, cam_dir / slug, _cam_name(file, root), cam_method)
                    yield row
                bar.update(1)


def _batch_results(clf: CXRClassifier, x: torch.Tensor, ok: np.ndarray):
    """``(probabilities as written, out-of-distribution flags, decisions)`` of the readable films of a batch."""
    if not ok.any():
        return None, None, None
    probs, flags = clf.predict_inputs(x[torch.from_numpy(ok)])
    probs = np.round(probs.astype(np.float64), 6)  # as written: the decision follows from the file
    return probs, flags, clf.decide(probs)


def _row(file: Path, label: str, names: Sequence[str], results, position: int, warnings) -> Tuple[PredictionRow, int]:
    """The row of the film at ``position`` among a batch's readable films (by the model's class ``names``), and
    the class index decided."""
    probs, flags, decided = results
    p = probs[position]
    row = PredictionRow(
        str(file),
        label,
        dict(zip(names, map(float, p))),
        prediction=names[int(p.argmax())],
        decision=names[int(decided[position])],
        out_of_distribution=None if flags is None else bool(flags[position]),
        warnings=warnings,
    )
    return row, int(decided[position])


def write_rows(path: Path, rows: Iterator[PredictionRow], class_names: Sequence[str]) -> Dict[str, int]:
    """Write ``rows`` to ``path`` as they come, under :func:`csv_columns` of ``class_names`` (the models'
    :func:`csv_classes`); returns how many files were classified and how many could not be read (counted once
    per file)."""
    classified, unreadable = set(), set()
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(csv_columns(class_names))
        for row in rows:
            out.writerow(row.as_csv(class_names))
            (unreadable if row.error else classified).add(row.file)
    return {"classified": len(classified), "unreadable": len(unreadable)}
