"""The cross-validation report (``cv.md``), rendered from its record (``cv.json``): out-of-fold figures with their
intervals, the ECE a calibrated model would show by chance, the per-fold table and each fold's error figure.
Research use only — not for diagnosis.

The figures follow the CV's classes (``cv.json``'s ``classes``; the database's for a record written before CVs kept
them): a row — and per fold a column — for each class's recall the record holds (:func:`recall_key`) and for each
class's images called the negative class (:func:`negative_key`: the critical classes always, the others where the
record holds them); none of the latter without a negative class.

Example:
    >>> negative_key("Viral Pneumonia"), recall_key("COVID")
    ('viral_pneumonia_to_normal', 'covid_recall')
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cxr.labels import DISCLAIMER, Classes
from cxr.reporting.run_facts import classes_line, recipe_summary
from cxr.reporting.tables import and_join, is_study_question, record_classes, to_negative_columns
from cxr.run_folder import CVFolder

__all__ = ["render_cv_report", "negative_key", "recall_key"]

#: Narrow per-fold columns abbreviate these class names (as the study's Table 1 does).
_SHORT_NAMES = {"Viral Pneumonia": "Viral Pn.", "Lung_Opacity": "Lung Op."}


def _slug(name: str) -> str:
    """``name`` in a key: lower case, each character not a letter or digit an underscore (as
    :func:`cxr.training.cv.headline_keys` writes them)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower())


def negative_key(name: str) -> str:
    """The ``cv.json`` key of class ``name``'s images called the negative class (historical name: ``_to_normal``)."""
    return f"{_slug(name)}_to_normal"


def recall_key(name: str) -> str:
    """The ``cv.json`` key of class ``name``'s recall."""
    return f"{_slug(name)}_recall"


def _rows(classes: Classes, held: Dict[str, Any]) -> List[Tuple[str, str, bool]]:
    """The out-of-fold table's rows, ``(key, label, as a percentage)``, for ``classes`` and the keys ``held``."""
    rows = [("accuracy", "accuracy", True)]
    rows += [(recall_key(c), f"{c} recall", True) for c in classes.names if recall_key(c) in held]
    rows += [
        (negative_key(c), f"{c} → {classes.negative}", False)
        for c in to_negative_columns(classes)
        if c in classes.critical or negative_key(c) in held
    ]
    return rows + [("macro_auroc", "macro AUROC", False), ("ece", "ECE (15 bins)", False)]


def _fmt(name: str, v: Optional[float], pct: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{int(round(v))}" if name.endswith("to_normal") else f"{v:.3f}"


def render_cv_report(result: Dict[str, Any], classes: Optional[Classes] = None) -> str:
    """``cv.md`` from a cross-validation's ``cv.json`` record (:func:`cxr.training.cv.run_cv`).

    Args:
        result: the ``cv.json`` record.
        classes: the CV's classes, whose recall and called-negative figures the tables show; ``None``: the
            record's own ``classes`` (the database's for a record written before CVs kept them).
    """
    classes = record_classes(result) if classes is None else classes
    r = result["recipe"]
    lines = [
        f"# Cross-validation: {r['model']}, {result['folds']} folds, {result['images']} images",
        "",
        f"*{DISCLAIMER}*",
        "",
        f"Data `{r['data']}`; {r['image_size']} px; {recipe_summary(r)}; kept model: {r.get('keep', 'best')}"
        f"{' epoch, then a final fit on training + validation' if r.get('final_fit') else ' epoch'}; "
        f"folds seeded {result['seed']}. Every image is scored once, "
        "by the fold model that did not train on it; intervals are stratified bootstrap 95% "
        f"({result['bootstrap_resamples']} resamples) over all {result['images']} out-of-fold predictions.",
        "",
    ]
    if not is_study_question(classes):
        lines += [f"Classes: {classes_line(classes)}.", ""]
    lines += ["| out of fold | value | 95% interval |", "|---|---|---|"]
    missing = {"value": None, "low": None, "high": None}
    for key, label, pct in _rows(classes, result["out_of_fold"]):
        s = result["out_of_fold"].get(key, missing)
        lines.append(
            f"| {label} | {_fmt(key, s['value'], pct)} | {_fmt(key, s['low'], pct)} – {_fmt(key, s['high'], pct)} |"
        )
    chance = result["out_of_fold"]["ece"].get("if_calibrated")
    if chance:
        lines += [
            "",
            f"A perfectly calibrated model would show an ECE of {chance['median']:.3f} on these {result['images']} "
            f"films by chance alone (95%: {chance['p95']:.3f}; consistency resampling): a measured ECE below that "
            "is no evidence of miscalibration.",
        ]
    lines += _per_fold_lines(result["per_fold"], classes)
    cv = CVFolder(".")
    lines += [
        "",
        f"Files: `{cv.folds.name}`, `{cv.splits.name}/fold-K.json`, `fold-K/` (each a full run folder), `{cv.oof.name}`.",
        "",
    ]
    figures = [f for f in result["per_fold"] if f.get("errors_figure")]
    if figures:
        first = (
            "most confident first"
            if classes.negative is None
            else f"{and_join(classes.critical)} called {classes.negative} first"
        )
        lines += [
            f"Each fold's misclassified test films (by its decision rule), {first}, with Grad-CAM — for this report "
            "only (the films are the dataset's):",
            "",
        ]
        lines += [f"![fold {f['fold']}]({f['errors_figure']})" for f in figures] + [""]
    return "\n".join(lines)


def _per_fold_lines(per_fold: Sequence[Dict[str, Any]], classes: Classes) -> List[str]:
    """The per-fold table: each fold's headline figures (recalls the record holds, each critical class called the
    negative one), its kept epoch, temperature and negative-class threshold."""
    held = per_fold[0] if per_fold else {}
    recalls = [c for c in classes.names if recall_key(c) in held]
    missed = list(classes.critical)
    neg = classes.negative
    head = ["fold", "images", "accuracy", *(f"{c} recall" for c in recalls)]
    head += [f"{_SHORT_NAMES.get(c, c)} → {neg}" for c in missed]
    head += ["macro AUROC", "ECE", "kept epoch", "temperature"] + ([] if neg is None else [f"{neg} threshold"])
    lines = ["", "Per fold:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in per_fold:
        t = "—" if f["temperature"] is None else f"{f['temperature']:.3f}"
        op = "—" if f.get("normal_threshold") is None else f"{f['normal_threshold']:.3f}"
        cells = [str(f["fold"]), str(f["images"]), _fmt("a", f["accuracy"], True)]
        cells += [_fmt("c", f[recall_key(c)], True) for c in recalls]
        cells += [str(f.get(negative_key(c), "n/a")) for c in missed]
        cells += [_fmt("auroc", f["macro_auroc"], False), _fmt("ece", f["ece"], False), str(f["kept_epoch"]), t]
        cells += [] if neg is None else [op]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
