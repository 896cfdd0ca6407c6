"""The run folder: every file a training or evaluation run writes, by name, in one place.

A run folder is what ``train_accelerate.py --output-dir`` (or ``python -m cxr.eval --output-dir``) fills:

- ``model/`` — the kept model in timm's Hub layout (``config.json`` + ``model.safetensors``);
- ``checkpoint.pt`` — the training state to resume from (written after every epoch);
- ``run_config.json``, ``split.json``, ``history.json``, ``metrics.json``, ``report.md``;
- ``predictions.csv`` (test), ``predictions_train.csv``, ``predictions_validation.csv``;
- ``confusion_matrix.png``, ``training_curves.png``, ``operating_point.png``, ``errors.png`` (never published);
- ``holdout/`` — with ``--final-fit``, the run on the training part alone, itself a run folder.

Every module that reads or writes one of these asks a :class:`RunFolder` for its path; no other module
spells a run's file names. The prediction files' format (:func:`write_predictions`,
:func:`read_predictions`) and atomic JSON writes (:func:`write_json`) live here too.

Example:
    >>> run = RunFolder("runs/lite0")
    >>> run.metrics.as_posix(), run.model_weights.as_posix(), run.predictions("train").name
    ('runs/lite0/metrics.json', 'runs/lite0/model/model.safetensors', 'predictions_train.csv')
    >>> run.holdout.split.as_posix()
    'runs/lite0/holdout/split.json'
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cxr.errors import CXRError

__all__ = [
    "RunFolder",
    "CVFolder",
    "check_writable",
    "run_id",
    "Predictions",
    "read_predictions",
    "class_columns",
    "write_predictions",
    "write_json",
    "read_json",
    "MODEL_CONFIG_NAME",
    "MODEL_WEIGHTS_NAME",
    "MODEL_OOD_NAME",
    "SPLIT_NAME",
    "PREDICTION_PARTS",
    "FORMAT_VERSION",
    "check_format",
]

#: The format of every folder and file cxr writes for a run: model folders (``config.json``'s
#: ``cxr.format_version``), ``run_config.json``, ``checkpoint.pt`` and a CV's ``folds.json``. One of another
#: format is refused by :func:`check_format`, never read through a fallback.
FORMAT_VERSION = 1

#: The model folder's files (timm's Hub layout).
MODEL_CONFIG_NAME = "config.json"
MODEL_WEIGHTS_NAME = "model.safetensors"
#: The model's out-of-distribution guard (:mod:`cxr.models.ood`): its training images in feature space.
MODEL_OOD_NAME = "ood_reference.safetensors"
#: The run's split (file names per part); published beside the model's ``config.json`` on the Hub.
SPLIT_NAME = "split.json"
#: The split parts a run writes predictions for, each to its own file.
PREDICTION_PARTS = ("train", "validation", "test")
_PREDICTION_FILES = {
    "train": "predictions_train.csv",
    "validation": "predictions_validation.csv",
    "test": "predictions.csv",
}


class RunFolder:
    """The paths of one run folder (nothing is created until written).

    Args:
        root: the run's ``--output-dir``.
    """

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # the model
    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def model_config(self) -> Path:
        return self.model_dir / MODEL_CONFIG_NAME

    @property
    def model_weights(self) -> Path:
        return self.model_dir / MODEL_WEIGHTS_NAME

    @property
    def model_ood(self) -> Path:
        return self.model_dir / MODEL_OOD_NAME

    # training state and settings
    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def run_config(self) -> Path:
        return self.root / "run_config.json"

    @property
    def split(self) -> Path:
        return self.root / SPLIT_NAME

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def holdout(self) -> "RunFolder":
        """``--final-fit``'s run on the training part alone."""
        return RunFolder(self.root / "holdout")

    # results
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def site_calibration(self) -> Path:
        """``python -m cxr.calibrate``'s record: the site, its films and what the new operating point guarantees."""
        return self.root / "site_calibration.json"

    @property
    def site_report(self) -> Path:
        """``python -m cxr.calibrate``'s page: the same in words and a table."""
        return self.root / "site_calibration.md"

    @property
    def confusion_matrix(self) -> Path:
        return self.root / "confusion_matrix.png"

    @property
    def operating_point_plot(self) -> Path:
        """Critical films called negative (COVID + Viral Pneumonia called Normal) and negative films flagged over the
        threshold, the chosen one marked."""
        return self.root / "operating_point.png"

    @property
    def errors_plot(self) -> Path:
        """The misclassified test films with their heat maps (local reports only: a Hub push never uploads it,
        the films are the dataset's)."""
        return self.root / "errors.png"

    @property
    def training_curves(self) -> Path:
        return self.root / "training_curves.png"

    def predictions(self, part: str = "test") -> Path:
        """The predictions file of ``part`` (one of :data:`PREDICTION_PARTS`)."""
        return self.root / _PREDICTION_FILES[part]

    @property
    def published(self) -> List[Path]:
        """The files a Hub push uploads beside the model folder (the model card is made from them)."""
        return [self.metrics, self.confusion_matrix, self.training_curves, self.operating_point_plot, self.split]

    # states
    def holds_run(self) -> bool:
        """Whether a run was started here (a checkpoint or results exist)."""
        return self.checkpoint.exists() or self.metrics.exists()

    def is_finished(self) -> bool:
        """Whether a run here finished: every run (training or ``cxr.eval``) writes ``metrics.json`` last."""
        return self.metrics.is_file()

    def files(self) -> List[Path]:
        """Every file and folder a run writes here (those that exist), ``holdout/`` included."""
        named = [
            self.model_dir,
            self.checkpoint,
            self.run_config,
            self.split,
            self.history,
            self.metrics,
            self.report,
            self.confusion_matrix,
            self.training_curves,
            self.operating_point_plot,
            self.errors_plot,
            self.holdout.root,
        ]
        named += [self.predictions(part) for part in PREDICTION_PARTS]
        return [p for p in named if p.exists() or p.is_symlink()]

    def clear(self) -> List[Path]:
        """Remove the files of an earlier run (``--overwrite-output-dir``) before a new run writes any, so no
        folder ever holds parts of two runs; files cxr did not write stay. Returns what was removed."""

        removed = self.files()
        for path in removed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return removed

    def run_ids(self) -> Dict[str, Optional[str]]:
        """The run identity (:func:`run_id`) each of the run's records carries: ``run_config.json``,
        ``metrics.json`` and the model's ``config.json`` (``None`` where a record has none or is missing)."""
        found: Dict[str, Optional[str]] = {}
        for path, key in (
            (self.run_config, ("run_id",)),
            (self.metrics, ("run_id",)),
            (self.model_config, ("cxr", "run_id")),
        ):
            value: Any = None
            try:
                value = read_json(path)
                for k in key:
                    value = value.get(k) if isinstance(value, dict) else None
            except (OSError, ValueError):
                value = None
            found[path.relative_to(self.root).as_posix()] = value
        return found

    def check_one_run(self) -> None:
        """Refuse a folder whose records come from different runs (an interrupted restart in the same folder).

        Raises:
            CXRError: naming each file and the run it belongs to.
        """

        ids = self.run_ids()
        if len(set(ids.values())) > 1:
            parts = ", ".join(f"{name}: {value or 'no run id'}" for name, value in ids.items())
            raise CXRError(
                f"{self.root} holds parts of different runs ({parts}); retrain into it with "
                "--overwrite-output-dir, or use another folder"
            )

    def format_version(self) -> Any:
        """The format ``run_config.json`` records (``None``: none recorded, or no readable record)."""
        try:
            return read_json(self.run_config).get("format_version")
        except (OSError, ValueError, AttributeError):
            return None

    def read_config(self) -> Optional[Dict[str, Any]]:
        """The settings the run was given (``run_config.json`` ``config``), ``None`` where unreadable."""
        try:
            return read_json(self.run_config)["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def check_format(found: Any, what: str) -> None:
    """Refuse a record of another format than :data:`FORMAT_VERSION` in one sentence.

    Args:
        found: the ``format_version`` the record carries (``None``: written before cxr recorded one).
        what: the record, as the sentence names it (e.g. ``"runs/lite0/model"``).

    Raises:
        CXRError: ``found`` is not this version's format.

    Example:
        >>> check_format(FORMAT_VERSION, "runs/x/model")
        >>> check_format(None, "runs/x/model")
        Traceback (most recent call last):
        ...
        cxr.errors.CXRError: runs/x/model was written by an earlier cxr, before run formats were versioned; this cxr reads format 1 only: train it again with this version (python app.py --quickstart retrains its own runs), or use the cxr version that wrote it.
    """
    if found == FORMAT_VERSION:
        return
    written = "before run formats were versioned" if found is None else f"in format {found}"
    raise CXRError(
        f"{what} was written by {'an earlier' if found is None or _older(found) else 'a newer'} cxr, {written}; this "
        f"cxr reads format {FORMAT_VERSION} only: train it again with this version (python app.py --quickstart "
        "retrains its own runs), or use the cxr version that wrote it."
    )


def _older(found: Any) -> bool:
    try:
        return int(found) < FORMAT_VERSION
    except (TypeError, ValueError):
        return True


def run_id(config: Dict[str, Any], split: Dict[str, Any]) -> str:
    """A run's identity: a digest of the settings that make it (``config``, the keys given) and its split,
    written into every record it leaves (:meth:`RunFolder.run_ids`).

    Example:
        >>> run_id({"model": "logreg", "seed": 1}, {"train": ["a"], "validation": [], "test": ["b"]})
        '1ee2888673b287ab'
    """

    payload = json.dumps({"config": config, "split": split}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CVFolder:
    """The paths of one cross-validation folder (``python -m cxr.cv --output-dir``): ``folds.json``, each fold's
    split (``splits/fold-K.json``) and run folder (``fold-K/``), the out-of-fold predictions
    (``oof_predictions.csv``) and the summary (``cv.json``) and report (``cv.md``).

    Example:
        >>> cv = CVFolder("runs/cv")
        >>> cv.oof.name, cv.fold(2).metrics.as_posix(), cv.fold_split(2).as_posix()
        ('oof_predictions.csv', 'runs/cv/fold-2/metrics.json', 'runs/cv/splits/fold-2.json')
    """

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)

    @property
    def folds(self) -> Path:
        return self.root / "folds.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    def fold_split(self, k: int) -> Path:
        return self.splits / f"fold-{k}.json"

    def fold(self, k: int) -> RunFolder:
        return RunFolder(self.root / f"fold-{k}")

    @property
    def oof(self) -> Path:
        return self.root / "oof_predictions.csv"

    @property
    def summary(self) -> Path:
        return self.root / "cv.json"

    @property
    def report(self) -> Path:
        return self.root / "cv.md"

    def is_finished(self) -> bool:
        """Whether a cross-validation finished here: the out-of-fold predictions and the summary exist."""
        return self.oof.is_file() and self.summary.is_file()


def check_writable(folder: Union[str, os.PathLike], flag: str = "--output-dir") -> None:
    """Refuse, before any work, an output folder that cannot be written: the folder, or the nearest existing
    folder above it, must accept a new file and its first block of data (a read-only folder, or a full disk).

    Raises:
        CXRError: naming the folder and why.
    """

    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise CXRError(f"{flag} {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())  # a full disk refuses the data, even where it still has an inode to give
    except OSError as e:
        raise CXRError(
            f"{flag} {folder}: cannot write in {existing} ({e.strerror}); choose a folder you can write to"
        ) from None


def read_json(path: Union[str, os.PathLike]) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def write_json(path: Union[str, os.PathLike], payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class Predictions:
    """One part's saved predictions: ``files``, true labels ``y``, ``probs`` (N x classes) and the class ``names``
    (the file's ``p_<class>`` columns, in order)."""

    def __init__(self, files: List[str], y: np.ndarray, probs: np.ndarray, names: Sequence[str]):
        self.files, self.y, self.probs, self.names = files, y, probs, tuple(names)

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def write_predictions(
    path: Union[str, os.PathLike],
    file_names: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    class_names: Sequence[str],
    decide: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> None:
    """A predictions file: file, true label, predicted label (argmax), the ``decision`` — the class index ``decide``
    gives for the probabilities as written (a model's operating point,
    :meth:`cxr.metrics.operating_point.OperatingPoint.decide`; argmax without one), so the file reproduces it —
    and one probability column per class of ``class_names`` (the model's, in output order)."""
    written = np.round(np.asarray(probs, dtype=np.float64), 6)
    decisions = written.argmax(axis=1) if decide is None else decide(written)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label", "prediction", "decision", *[f"p_{c}" for c in class_names]])
        for name, lab, p, d in zip(file_names, labels, written, decisions):
            pred = class_names[int(np.argmax(p))]
            w.writerow([name, class_names[int(lab)], pred, class_names[int(d)], *[f"{v:.6f}" for v in p]])


def read_predictions(path: Union[str, os.PathLike]) -> Predictions:
    """Parse a predictions file written by :func:`write_predictions` (its classes from its ``p_<class>`` columns)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = class_columns(reader.fieldnames or [])
        rows = list(reader)
    files = [r["file_name"] for r in rows]
    y = np.array([names.index(r["label"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows], dtype=np.float64).reshape(-1, len(names))
    return Predictions(files, y, probs, names)


def class_columns(header: Sequence[str]) -> Tuple[str, ...]:
    """The class names of a predictions file's header: its ``p_<class>`` columns, in order."""
    return tuple(h[2:] for h in header if h.startswith("p_"))
