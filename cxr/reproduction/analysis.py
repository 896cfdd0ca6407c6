"""Every number of a study report, recomputed from the runs' saved predictions.

:func:`analyse_study` reads each run's ``predictions_train.csv``, ``predictions_validation.csv``
and ``predictions.csv`` (test) and returns a JSON-ready dict: Table 1, per-class tables, bootstrap
intervals, McNemar's tests, calibration before and after temperature scaling, and a source audit
when the data carries source metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cxr.data.sources import read_sources
from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, DATABASE
from cxr.metrics import compute_metrics, selection_key
from cxr.metrics.stats import (
    accuracy_of,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    mcnemar_test,
    negative_log_likelihood,
    recall_of,
    reliability_bins,
    stratified_bootstrap_ci,
)
from cxr.run_folder import PREDICTION_PARTS, Predictions, RunFolder, read_predictions

__all__ = ["analyse_study", "read_sources", "source_audit"]  # read_sources: cxr.data.sources

_logger = logging.getLogger(__name__)


def source_audit(sources: Dict[str, str], all_files: Sequence[str], runs: Dict[str, Predictions]) -> Dict[str, Any]:
    """Per-class sources of the whole data, warnings for single-source classes, test accuracy per source."""

    def source_of(name: str) -> str:
        return sources.get(name) or sources.get(name.split("/", 1)[-1], "unknown")

    per_class: Dict[str, Dict[str, int]] = {c: {} for c in CLASS_NAMES}
    for name in all_files:
        cls = name.split("/", 1)[0]
        src = source_of(name)
        per_class[cls][src] = per_class[cls].get(src, 0) + 1
    classes_of_source: Dict[str, set] = {}
    for cls, srcs in per_class.items():
        for src in srcs:
            classes_of_source.setdefault(src, set()).add(cls)
    warnings = []
    for cls, srcs in per_class.items():
        if len(srcs) == 1:
            src = next(iter(srcs))
            only = classes_of_source[src] == {cls}
            warnings.append(
                f"{cls} is drawn from one source only ({src})"
                + (
                    "; that source supplies no other class, so recognising the source alone identifies the class."
                    if only
                    else "."
                )
            )
    accuracy = {}
    for run, p in runs.items():
        by_src: Dict[str, List[bool]] = {}
        for name, yy, pp in zip(p.files, p.y, p.pred):
            by_src.setdefault(source_of(name), []).append(bool(yy == pp))
        accuracy[run] = {s: {"n": len(v), "accuracy": float(np.mean(v))} for s, v in sorted(by_src.items())}
    return {"per_class": per_class, "warnings": warnings, "test_accuracy_by_source": accuracy}


def _run_numbers(parts: Dict[str, Predictions], n_resamples: int) -> Dict[str, Any]:
    test, val = parts["test"], parts["validation"]
    m_test = compute_metrics(test.y, test.probs, DATABASE)
    m_val = compute_metrics(val.y, val.probs, DATABASE)
    covid = CLASS_NAMES.index("COVID")
    t = fit_temperature(val.y, val.probs)
    test_scaled = apply_temperature(test.probs, t)
    val_scaled = apply_temperature(val.probs, t)
    return {
        "train_accuracy": compute_metrics(parts["train"].y, parts["train"].probs, DATABASE)["accuracy"],
        "validation": {k: m_val[k] for k in ("accuracy", "critical_to_normal", "to_normal")},
        "test": {
            k: m_test[k] for k in ("accuracy", "per_class", "to_normal", "confusion_matrix", "auroc", "num_images")
        },
        "ci95": {
            "accuracy": stratified_bootstrap_ci(test.y, test.pred, accuracy_of, n_resamples),
            "covid_recall": stratified_bootstrap_ci(test.y, test.pred, recall_of(covid), n_resamples),
        },
        "calibration": {
            "temperature": t,
            "ece_test_before": expected_calibration_error(test.y, test.probs),
            "ece_test_after": expected_calibration_error(test.y, test_scaled),
            "nll_validation_before": negative_log_likelihood(val.y, val.probs),
            "nll_validation_after": negative_log_likelihood(val.y, val_scaled),
            "nll_test_before": negative_log_likelihood(test.y, test.probs),
            "nll_test_after": negative_log_likelihood(test.y, test_scaled),
            "reliability_before": {k: v.tolist() for k, v in reliability_bins(test.y, test.probs).items()},
            "reliability_after": {k: v.tolist() for k, v in reliability_bins(test.y, test_scaled).items()},
        },
    }


def analyse_study(
    run_dirs: Dict[str, Path],
    data_dir: Optional[Path] = None,
    all_files: Sequence[str] = (),
    n_resamples: int = 1000,
) -> Dict[str, Any]:
    """Recompute every figure of the study report from the runs' prediction files.

    Args:
        run_dirs: ``{run name: run folder}`` in report order.
        data_dir: the data folder (for ``metadata.csv``'s sources).
        all_files: every file of the split (for the per-class source counts).
        n_resamples: bootstrap resamples.

    Returns:
        ``{"runs": {name: numbers}, "best": name, "mcnemar": {...}, "source_audit": {...} | None}``.
    """
    parts = {
        name: {part: read_predictions(RunFolder(d).predictions(part)) for part in PREDICTION_PARTS}
        for name, d in run_dirs.items()
    }
    test_files = {name: p["test"].files for name, p in parts.items()}
    first = next(iter(test_files.values()))
    for name, files in test_files.items():
        if files != first:
            raise ValueError(f"run {name} was tested on other images than the others: a study needs one split")
    runs = {name: _run_numbers(p, n_resamples) for name, p in parts.items()}
    # the best model is chosen on validation (as each run chose its epoch), never on test
    best = max(runs, key=lambda n: selection_key(runs[n]["validation"]))
    y = parts[best]["test"].y
    mcnemar = {
        name: mcnemar_test(y, parts[best]["test"].pred, parts[name]["test"].pred) for name in runs if name != best
    }
    sources = read_sources(data_dir) if data_dir else None
    audit = source_audit(sources, all_files, {n: p["test"] for n, p in parts.items()}) if sources else None
    return {
        "runs": runs,
        "best": best,
        "mcnemar": mcnemar,
        "source_audit": audit,
        "critical_classes": list(CRITICAL_CLASSES),
    }
