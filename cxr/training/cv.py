"""Cross-validation, the instrument for deciding recipe changes:
``python -m cxr.cv --data DIR --folds 5 --output-dir DIR --model tf_efficientnet_lite0 [any training flag]``.

Every image is scored exactly once by a model that never saw it: the images are cut into ``--folds``
stratified, seeded folds (``folds.json``); for each fold, one model is trained by the same code as
``train_accelerate.py`` with that fold as its test part (the validation part, a stratified ninth of the
rest, fits the temperature and, with ``--keep best``, picks the epoch), in ``fold-K/``. The out-of-fold predictions of all
folds (``oof_predictions.csv``) then give accuracy, each critical class's recall, each class's images called
negative (:func:`headline_keys`: ``covid_recall``, ``covid_to_normal``, ... for the database), macro AUROC and ECE
over all images, each with a stratified bootstrap 95% interval, plus a per-fold table (``cv.md``, ``cv.json``). On
the 600-image sample that is 600 scored images instead of 60.

A killed run resumes where it stopped: finished folds are kept, an interrupted fold continues from its
checkpoint. ``accelerate launch -m cxr.cv ...`` trains each fold on every process.
Research use only — not for diagnosis.

Example:
    >>> folds = stratified_folds(["COVID/a.png", "COVID/b.png", "Normal/c.png", "Normal/d.png"],
    ...                          [0, 0, 2, 2], k=2, seed=1)
    >>> sorted(len(f) for f in folds)
    [2, 2]
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cxr.data.content import content_digests
from cxr.data.data_source import load_data_source
from cxr.data.labelling import Labelling
from cxr.data.splits import save_split, stratified_split
from cxr.errors import CXRError
from cxr.labels import Classes
from cxr.metrics import compute_metrics
from cxr.metrics.stats import ece_if_calibrated, expected_calibration_error, stratified_bootstrap_intervals
from cxr.reporting.cv_report import render_cv_report
from cxr.run_folder import FORMAT_VERSION, CVFolder, check_format, read_json, read_predictions, write_json
from cxr.training.loop import train
from cxr.training.resume import has_checkpoint, recipe_differences, saved_recipe

__all__ = [
    "stratified_folds",
    "fold_split",
    "check_folds",
    "run_cv",
    "summarise_oof",
    "headline_keys",
    "refuse_per_run_flags",
]

_logger = logging.getLogger(__name__)

#: Training flags that make no sense per fold: the CV sets the split, resumes by itself and publishes nothing.
_NOT_FOR_CV = {"split_file": "--split-file", "resume": "--resume", "push_to_hub": "--push-to-hub"}


def stratified_folds(file_names: Sequence[str], labels: Sequence[int], k: int, seed: int = 1) -> List[List[str]]:
    """Cut the images into ``k`` folds with every class spread evenly (sizes differ by at most one per class).

    Within each class the names are sorted, shuffled with ``default_rng([seed, label, k])`` and dealt
    round-robin, starting one fold further for each class so that fold sizes stay balanced overall.

    Returns:
        ``k`` sorted lists of file names.
    """
    by_class: Dict[int, List[str]] = {}
    for name, lab in zip(file_names, labels):
        by_class.setdefault(int(lab), []).append(name)
    folds: List[List[str]] = [[] for _ in range(k)]
    start = 0
    for lab in sorted(by_class):
        names = sorted(by_class[lab])
        order = np.random.default_rng([seed, lab, k]).permutation(len(names))
        for i, j in enumerate(order):
            folds[(start + i) % k].append(names[j])
        start += len(names)
    return [sorted(f) for f in folds]


def fold_split(folds: Sequence[Sequence[str]], k: int, labels: Dict[str, int], seed: int) -> Dict[str, List[str]]:
    """Train/validation/test parts for fold ``k``: test is the fold, validation a stratified ninth of the rest."""

    rest = sorted(n for i, f in enumerate(folds) if i != k for n in f)
    inner = stratified_split(rest, [labels[n] for n in rest], seed=seed, fractions=(8 / 9, 1 / 9, 0.0))
    return {"train": inner["train"], "validation": inner["validation"], "test": sorted(folds[k])}


def check_folds(k: int, labels: Sequence[int], names: Sequence[str]) -> None:
    """``--folds`` must be at least 2, at most the smallest class's image count, and leave every class at
    least 3 images outside each fold (training and validation both need it).

    Raises:
        CXRError: naming the limit.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    if k < 2:
        raise CXRError(f"--folds must be at least 2, got {k}")
    smallest, n = names[int(counts.argmin())], int(counts.min())
    if k > n:
        raise CXRError(
            f"--folds {k} is more than the smallest class has images ({smallest}: {n}); every fold needs every class"
        )
    if n - -(-n // k) < 3:
        raise CXRError(
            f"with --folds {k}, {smallest} ({n} images) leaves fewer than 3 images outside a fold, too few "
            "to train on and keep one for validation; use fewer folds or more images"
        )


def _ece(y: np.ndarray, probs: np.ndarray) -> float:

    return expected_calibration_error(y, probs)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower())


def headline_keys(classes: Classes) -> Dict[str, List[str]]:
    """The headline figures' keys for ``classes``: ``recall`` (the first critical class's recall, ``covid_recall``;
    none without a negative class) and ``to_negative`` (each class other than the negative, critical ones first:
    its films called negative, ``covid_to_normal``), with the class each names."""
    others = [*classes.critical, *(c for c in classes.names if c not in classes.critical and c != classes.negative)]
    return {
        "recall": [f"{_slug(c)}_recall" for c in classes.critical[:1]],
        "to_negative": [f"{_slug(c)}_to_normal" for c in others] if classes.negative else [],
        "classes": others if classes.negative else [],
    }


def _headline(y: np.ndarray, probs: np.ndarray, classes: Classes) -> Dict[str, Optional[float]]:

    m = compute_metrics(y, probs, classes)
    keys = headline_keys(classes)
    out: Dict[str, Optional[float]] = {"accuracy": m["accuracy"]}
    for key, c in zip(keys["recall"], classes.critical):
        out[key] = m["per_class"][c]["recall"]
    for key, c in zip(keys["to_negative"], keys["classes"]):
        out[key] = m["to_normal"].get(c, 0)
    out.update(macro_auroc=m["auroc"], ece=_ece(y, probs))
    return out


def summarise_oof(
    y: np.ndarray, probs: np.ndarray, classes: Classes, n_resamples: int = 1000
) -> Dict[str, Dict[str, float]]:
    """Headline figures of out-of-fold predictions, each with a stratified bootstrap 95% interval.

    Returns:
        ``{name: {"value", "low", "high"}}`` for accuracy, the first critical class's recall, each other class's
        images called negative (:func:`headline_keys`), macro AUROC and ECE (which also has ``if_calibrated``: the
        ECE a calibrated model would show on these films by chance, :func:`cxr.metrics.stats.ece_if_calibrated`).
    """

    cis = stratified_bootstrap_intervals(y, probs, lambda a, b: _headline(a, b, classes), n_resamples=n_resamples)
    summary = {name: {"value": v, "low": lo, "high": hi} for name, (v, lo, hi) in cis.items()}
    summary["ece"]["if_calibrated"] = ece_if_calibrated(probs)
    return summary


def _write_oof(path: Path, rows: List[tuple], names: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label", "fold", "prediction", *[f"p_{c}" for c in names]])
        for name, lab, fold, p in rows:
            w.writerow([name, names[lab], fold, names[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])


def _prepare(out: CVFolder, data: str, k: int, seed: int, cfg) -> Dict[str, Any]:
    """The fold files (written once; a rerun must ask for the same folds)."""

    source = load_data_source(data, cfg.dataset_revision, cfg.dataset_config, Labelling.parse(cfg.label_map))
    classes = Classes.resolve(source.dataset.features["label"].names, cfg.negative_class, cfg.critical_classes)
    names, labels = list(source.dataset["file_name"]), list(source.dataset["label"])
    check_folds(k, labels, classes.names)
    folds_file = out.folds
    folds = stratified_folds(names, labels, k, seed)
    payload = {
        "format_version": FORMAT_VERSION,
        "folds": k,
        "seed": seed,
        "images": len(names),
        "fold_files": folds,
    }
    if folds_file.is_file():
        saved = json.loads(folds_file.read_text())
        check_format(saved.get("format_version"), f"the cross-validation in {out.root}")
        if saved.get("fold_files") != folds:
            raise CXRError(
                f"{out.root} holds a cross-validation with other folds ({saved.get('folds')} folds, seed "
                f"{saved.get('seed')}, {saved.get('images')} images); use another --output-dir"
            )
    films = source.dataset
    return {
        "payload": payload,
        "folds": folds,
        "labels": dict(zip(names, map(int, labels))),
        "films": films,
        "classes": classes,
    }


def refuse_per_run_flags(cfg) -> None:
    for field, flag in _NOT_FOR_CV.items():
        if getattr(cfg, field):
            raise CXRError(
                f"{flag} does not apply to cross-validation (the folds set the split; a rerun resumes; "
                "publish a model trained with train_accelerate.py)"
            )


def run_cv(cfg, folds: int = 5, n_resamples: int = 1000) -> Dict[str, Any]:
    """Train one model per fold and score every image once (see the module docstring).

    Args:
        cfg: a :class:`cxr.training.config.TrainConfig`; its ``output_dir`` is the CV folder, its ``seed`` seeds
            the folds, and every other field is each fold's training recipe.
        folds: number of folds.
        n_resamples: bootstrap resamples for the intervals.

    Returns:
        The ``cv.json`` dict (on the main process; ``{}`` on the others).
    """
    from accelerate import PartialState  # accelerate loads only when a run starts
    from accelerate.utils import parse_flag_from_env

    refuse_per_run_flags(cfg)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    out = CVFolder(cfg.output_dir)
    prepared = _prepare(out, cfg.data, folds, cfg.seed, cfg)
    state.wait_for_everyone()  # every process has compared the saved folds before the main process rewrites them
    if state.is_main_process:
        _write_folds(out, prepared, folds, cfg.seed)
    state.wait_for_everyone()
    log: Dict[str, Any] = {}
    for k in range(folds):
        t0 = time.time()
        status = _run_fold(out, k, folds, cfg, state.is_main_process)
        log[f"fold-{k}"] = {"status": status, "seconds": round(time.time() - t0, 1)}
        if state.is_main_process:
            print(f"[cv fold {k + 1}/{folds}] {status} in {log[f'fold-{k}']['seconds']} s", flush=True)
    result: Dict[str, Any] = {}
    if state.is_main_process:
        result = _write_results(out, cfg, folds, prepared["labels"], prepared["classes"], log, n_resamples)
    state.wait_for_everyone()
    return result


def _write_folds(out: CVFolder, prepared: Dict[str, Any], folds: int, seed: int) -> None:
    """``folds.json`` and each fold's split file (training and validation in 8:1 of the other folds)."""

    out.splits.mkdir(parents=True, exist_ok=True)
    # which films these are, whatever their names: read once, by the process that writes the record
    write_json(out.folds, {**prepared["payload"], "content": content_digests(prepared["films"])})
    fractions = (round((folds - 1) / folds * 8 / 9, 4), round((folds - 1) / folds / 9, 4), round(1 / folds, 4))
    for k in range(folds):
        split = fold_split(prepared["folds"], k, prepared["labels"], seed)
        save_split(out.fold_split(k), split, seed, fractions=fractions)


def _run_fold(out: CVFolder, k: int, folds: int, cfg, main_process: bool) -> str:
    """Train fold ``k`` (or resume it, or keep it when it finished with the same recipe); returns what was done."""

    run = out.fold(k)
    if run.is_finished():
        differs = recipe_differences(saved_recipe(run.root), cfg)
        if differs:
            raise CXRError(
                f"{run.root} was trained with another recipe ({', '.join(differs)}); a CV folder holds "
                "one recipe: choose another --output-dir, or remove the folder to start over"
            )
        return "kept (finished before)"
    resume = "auto" if has_checkpoint(run.root, cfg.final_fit) else None
    if main_process:
        print(f"[cv fold {k + 1}/{folds}] {'resuming' if resume else 'training'} {cfg.model} in {run.root}", flush=True)
    train(
        dataclasses.replace(
            cfg,
            output_dir=str(run.root),
            split_file=str(out.fold_split(k)),
            resume=resume,
            overwrite_output_dir=True,
            # never out-of-fold predictions of the sample (they hold this fold's test films): its validation
            choose_on="validation" if cfg.choose_on == "auto" else cfg.choose_on,
        )
    )
    return "resumed" if resume else "trained"


def _write_results(
    out: CVFolder,
    cfg,
    folds: int,
    labels: Dict[str, int],
    classes: Classes,
    log: Dict[str, Any],
    n_resamples: int,
) -> Dict[str, Any]:
    rows, per_fold = [], []
    for k in range(folds):
        run = out.fold(k)
        pred = read_predictions(run.predictions("test"))
        metrics = read_json(run.metrics)
        rows += [(n, int(lab), k, p) for n, lab, p in zip(pred.files, pred.y, pred.probs)]
        per_fold.append(
            {
                "fold": k,
                "images": len(pred.files),
                **_headline(pred.y, pred.probs, classes),
                "kept_epoch": metrics["kept_epoch"],
                "temperature": (metrics.get("calibration") or {}).get("temperature"),
                "normal_threshold": (metrics.get("decision") or {}).get("normal_threshold"),
                "errors_figure": run.errors_plot.relative_to(out.root).as_posix()
                if run.errors_plot.is_file()
                else None,
            }
        )
    names = [r[0] for r in rows]
    if sorted(names) != sorted(labels) or len(set(names)) != len(names):
        raise CXRError(
            f"the folds' test predictions do not cover every image exactly once ({len(names)} rows for "
            f"{len(labels)} images): remove {out.root} and run again"
        )
    rows.sort(key=lambda r: r[0])
    _write_oof(out.oof, rows, classes.names)
    y = np.array([r[1] for r in rows])
    probs = np.array([r[3] for r in rows])
    result = {
        "folds": folds,
        "images": len(rows),
        "seed": cfg.seed,
        "bootstrap_resamples": n_resamples,
        "recipe": {k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "overwrite_output_dir")},
        "classes": classes.to_dict(),
        "out_of_fold": summarise_oof(y, probs, classes, n_resamples),
        "per_fold": per_fold,
        "runs_log": log,
    }
    write_json(out.summary, result)
    out.report.write_text(render_cv_report(result))
    return result
