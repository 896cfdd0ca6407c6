"""Human-readable outputs of a run: ``report.md``, ``confusion_matrix.png``, ``training_curves.png``.

Every number comes from the ``metrics.json`` dict passed in, and every class name from the run's classes
(``metrics.json``'s ``classes``; :func:`cxr.reporting.tables.record_classes`); the study's published numbers come
from :mod:`cxr.reporting.study_reference` and are labelled as such, beside a model of the database's classes only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from cxr.labels import DISCLAIMER, Classes
from cxr.reporting.study_reference import STUDY_PER_CLASS, STUDY_SOURCE, study_row
from cxr.reporting.tables import (
    and_join,
    is_study_classes,
    is_study_question,
    pct,
    per_class_lines,
    record_classes,
    study_table1_row,
    table1_header,
    table1_row,
)
from cxr.run_folder import RunFolder

__all__ = [
    "write_report",
    "table1_lines",
    "decision_lines",
    "present_lines",
    "DISCLAIMER",
]

_logger = logging.getLogger(__name__)


def _classes(metrics: Dict[str, Any], classes: Optional[Classes]) -> Classes:
    return record_classes(metrics) if classes is None else classes


def decision_lines(metrics: Dict[str, Any], classes: Optional[Classes] = None) -> List[str]:
    """The report's section on the decision rule: the operating point, what chose it and what it guarantees, and on
    test what it calls negative against argmax; for classes without a negative class, that the decision is argmax.

    Args:
        metrics: the ``metrics.json`` dict (``decision``, ``test``).
        classes: the run's classes; ``None``: the record's own (:func:`cxr.reporting.tables.record_classes`).
    """
    classes = _classes(metrics, classes)
    decision, test = metrics.get("decision"), metrics["test"]
    if not decision:
        return []
    neg, critical = classes.negative, classes.critical_label
    if neg is None:
        return [
            "## Decision (no negative class: the decision is the most probable class, argmax)",
            "",
            f"Decision: {decision['rule']}: the decision is the prediction above.",
            "",
        ]
    aim = "the study's aim" if is_study_question(classes) else "the aim"
    lines = [f"## Decision ({aim}: the fewest {and_join(classes.critical)} films called {neg})", ""]
    if "normal_threshold" not in decision:
        return lines + [f"Decision: {decision['rule']}: the decision is the prediction above.", ""]
    rates = decision["rates"]
    negative = classes.negative_index
    negative_kept = int(test["confusion_matrix"][negative][negative])
    chosen = decision.get("rates_where_chosen") or {}
    target = decision.get("max_missed_rate")
    lines += [
        f"Decision rule: **{decision['rule']}**, else the most probable other class"
        + (f"; chosen for at most {target:.1%} of {critical} films called {neg}" if target is not None else "")
        + (f", on {decision['chosen_on']}" if decision.get("chosen_on") else "")
        + (
            f" (there: {chosen['critical_called_normal']}/{chosen['critical']} called {neg}, "
            f"{chosen['normal_kept']}/{chosen['normal']} {neg} kept)"
            if chosen.get("critical")
            else ""
        )
        + ".",
        "",
    ]
    if decision.get("guarantee_sentence"):
        lines += [decision["guarantee_sentence"], ""]
    lines += [
        f"| on the test films | {critical} called {neg} | {neg} films kept {neg} | accuracy |",
        "|---|---|---|---|",
        f"| the decision | {rates['critical_called_normal']}/{rates['critical']} | {rates['normal_kept']}/{rates['normal']} "
        f"({pct(rates['normal_kept_rate'])}) | {pct(decision['accuracy'])} |",
        f"| argmax (the prediction) | {test['critical_to_normal']}/{rates['critical']} | "
        f"{negative_kept}/{rates['normal']} ({pct(negative_kept / max(rates['normal'], 1))}) | {pct(test['accuracy'])} |",
        "",
    ]
    return lines


def _ci(c: Dict[str, float]) -> str:
    return f"{pct(c['value'])} [{pct(c['low'])}, {pct(c['high'])}]"


def present_lines(metrics: Dict[str, Any], classes: Optional[Classes] = None) -> List[str]:
    """The report's section over the classes the evaluated films hold (``metrics.json`` ``classes_present``):
    recall and what each class was called, argmax and decision, then the same per source; the columns of films
    called the negative class only for classes that have one.

    Args:
        metrics: the ``metrics.json`` dict.
        classes: the model's classes; ``None``: the record's own (:func:`cxr.reporting.tables.record_classes`).
    """
    classes = _classes(metrics, classes)
    block = metrics.get("classes_present")
    if not block:
        return []
    neg = classes.negative
    arg, dec = block["argmax"], block["decision"]
    lines = [
        "## Over the classes present",
        "",
        f"{arg['images']} films of {len(arg['classes'])} class(es) ({', '.join(arg['classes'])}); stratified "
        f"bootstrap 95% intervals ({arg['bootstrap_resamples']} resamples). Accuracy over these classes: argmax "
        f"{_ci(arg['accuracy'])}, decision {_ci(dec['accuracy'])}.",
        "",
        "| true class | films | recall, argmax | recall, decision | called (argmax): "
        + " / ".join(classes.names)
        + " |"
        + ("" if neg is None else f" called {neg} by the decision |"),
        "|---|---|---|---|---|" + ("" if neg is None else "---|"),
    ]
    for c in arg["classes"]:
        a, d = arg["per_class"][c], dec["per_class"][c]
        called = " / ".join(str(a["called"][k]) for k in classes.names)
        line = f"| {c} | {a['images']} | {_ci(a['recall'])} | {_ci(d['recall'])} | {called} |"
        lines.append(line + ("" if neg is None else f" {d['called'][neg]} |"))
    lines.append("")
    by_source = block.get("by_source")
    if by_source:
        lines += [
            "Per source (as the data names them):",
            "",
            "| source | true class | films | recall, argmax | recall, decision |"
            + ("" if neg is None else f" called {neg}: argmax / decision |"),
            "|---|---|---|---|---|" + ("" if neg is None else "---|"),
        ]
        for src, a_src in by_source["argmax"].items():
            d_src = by_source["decision"][src]
            for c in a_src["classes"]:
                a, d = a_src["per_class"][c], d_src["per_class"][c]
                line = f"| {src} | {c} | {a['images']} | {_ci(a['recall'])} | {_ci(d['recall'])} |"
                lines.append(line + ("" if neg is None else f" {a['called'][neg]} / {d['called'][neg]} |"))
        lines.append("")
    return lines


def table1_lines(model_name: str, metrics: Dict[str, Any], classes: Optional[Classes] = None) -> List[str]:
    """Table 1 as markdown rows: this run's row, then, for a model of the database's classes, the study's for the
    same model (:func:`cxr.reporting.tables.table1_header`: the count columns follow ``classes``).

    Args:
        model_name: the ``--model`` name (selects the study's row).
        metrics: the ``metrics.json`` dict (``test``; ``train`` optional).
        classes: the run's classes; ``None``: the record's own (:func:`cxr.reporting.tables.record_classes`).
    """
    classes = _classes(metrics, classes)
    test = metrics["test"]
    train_acc = metrics.get("train", {}).get("accuracy")
    measured = f"{test['num_images']} test images"
    lines = [
        *table1_header(classes),
        table1_row(f"{model_name} (this run)", measured, train_acc, test["accuracy"], test["to_normal"], classes),
    ]
    row = study_row(model_name) if is_study_classes(classes) else None
    return lines + [study_table1_row(row, "study")] if row else lines


def write_report(
    path: Path,
    model_name: str,
    metrics: Dict[str, Any],
    run_info: Dict[str, Any],
    images: Optional[Sequence[str]] = None,
    classes: Optional[Classes] = None,
) -> None:
    """Write ``report.md``: Table 1 and the per-class table for this model — beside the study's, for a model of the
    database's classes —, the decision, the figures over the classes present and the validation.

    Args:
        path: the file to write.
        model_name: the ``--model`` name (selects the study's rows).
        metrics: the ``metrics.json`` dict (``test`` required; ``validation``, ``train`` optional).
        run_info: facts to list (data, split, preprocessing, epochs, ...), as ``{label: value}``.
        images: image files beside the report to embed (default: the run folder's confusion matrix and
            training curves; missing ones are skipped).
        classes: the model's classes, which every table and sentence names; ``None``: ``metrics``' own ``classes``
            (the database's for a record written before runs kept them).
    """
    classes = _classes(metrics, classes)
    if is_study_classes(classes):
        source_note = "Images of each class in this database come largely from their own source, so a "
    else:
        source_note = "Where the images of each class come largely from their own source, a "
    lines = [
        f"# {model_name}: chest X-ray classification report",
        "",
        f"**{DISCLAIMER}** {source_note}"
        "model can learn the source instead of the disease (DeGrave et al., Nature Machine Intelligence 2021).",
        "",
        "## Run",
        "",
        *[f"- {k}: {v}" for k, v in run_info.items()],
        "",
        *_study_tables(model_name, metrics, classes),
        *decision_lines(metrics, classes),
        *present_lines(metrics, classes),
        *_validation_lines(metrics, classes),
        *_figure_lines(path, metrics, images),
    ]
    path.write_text("\n".join(lines))


def _study_tables(model_name: str, metrics: Dict[str, Any], classes: Classes) -> List[str]:
    """Table 1 and the per-class table of test, each beside the study's own figures for the database's classes."""
    test = metrics["test"]
    study = is_study_classes(classes)
    if study:
        heading = "## Table 1 (the study's layout)"
        note = (
            "Counts are test images of each class predicted as Normal; the study's primary aim is the fewest "
            "COVID and Viral Pneumonia images called Normal."
        )
    elif classes.negative is None:
        heading = "## Test summary"
        note = "No negative class: the model's decision is the most probable class (argmax)."
    else:
        heading = "## Test summary"
        note = (
            f"Counts are test images of each class predicted as {classes.negative}; the aim is the fewest "
            f"{and_join(classes.critical)} images called {classes.negative}."
        )
    lines = [heading, "", note, "", *table1_lines(model_name, metrics, classes), ""]
    if study and study_row(model_name):
        lines += [
            f"Study row: {STUDY_SOURCE}. Figures measured on different test sets are not directly comparable.",
            "",
        ]
    lines += [
        "## Per-class results (test)",
        "",
        "Precision = correct / predicted as the class; recall = correct / truly the class.",
        "",
        *per_class_lines(model_name, test, classes),
        "",
    ]
    if study and model_name in STUDY_PER_CLASS:
        lines += ["The study printed these with precision and recall swapped; its values are shown corrected.", ""]
    auroc = f"Macro one-vs-rest AUROC: {test['auroc']:.4f}" if test.get("auroc") is not None else "AUROC: undefined"
    return lines + [auroc, ""]


def _validation_lines(metrics: Dict[str, Any], classes: Classes) -> List[str]:
    """The validation section: what validation did in this run (kept the epoch, was held out, was trained on)."""
    val = metrics.get("validation")
    if not val:
        return []
    if metrics.get("final_fit"):
        role = " (trained on: --final-fit refits on training + validation)"
    elif metrics.get("keep", "best") == "best":
        role = " (picked the kept epoch)"
    else:
        role = " (held out; the last epoch is kept)"
    text = f"Accuracy {pct(val['accuracy'])}"
    if classes.negative is not None:
        missed = sum(val["to_normal"].get(c, 0) for c in classes.critical)
        text += f"; {classes.critical_label} predicted as {classes.negative}: {missed}"
    return ["## Validation" + role, "", text + ".", ""]


def _figure_lines(path: Path, metrics: Dict[str, Any], images: Optional[Sequence[str]]) -> List[str]:
    """The figures beside the report that exist, embedded (the error gallery with the films it shows)."""
    run = RunFolder(path.parent)
    shown = (run.confusion_matrix, run.training_curves, run.operating_point_plot, run.errors_plot)
    lines: List[str] = []
    for img in images if images is not None else [p.name for p in shown]:
        if (path.parent / img).exists():
            lines += [f"![{img}]({img})", ""]
            if img == run.errors_plot.name and metrics.get("errors_shown"):
                lines += ["Films shown, in order: " + ", ".join(f"`{f}`" for f in metrics["errors_shown"]) + ".", ""]
    return lines
