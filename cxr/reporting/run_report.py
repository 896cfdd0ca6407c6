"""Human-readable outputs of a run: ``report.md``, ``confusion_matrix.png``, ``training_curves.png``.

Every number comes from the ``metrics.json`` dict passed in; the study's published numbers come
from :mod:`cxr.reporting.study_reference` and are labelled as such.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from cxr.labels import CLASS_NAMES, DISCLAIMER, NORMAL
from cxr.reporting.study_reference import STUDY_PER_CLASS, STUDY_SOURCE, study_row
from cxr.reporting.tables import TABLE1_HEADER, pct, per_class_lines, study_table1_row, table1_row
from cxr.run_folder import RunFolder

__all__ = [
    "write_report",
    "table1_lines",
    "present_lines",
    "DISCLAIMER",
]

_logger = logging.getLogger(__name__)


def decision_lines(metrics: Dict[str, Any]) -> List[str]:
    """The report's section on the decision rule: the operating point, what chose it, and on test what it calls
    Normal against argmax."""
    decision, test = metrics.get("decision"), metrics["test"]
    if not decision:
        return []
    lines = ["## Decision (the study's aim: the fewest COVID and Viral Pneumonia films called Normal)", ""]
    if "normal_threshold" not in decision:
        return lines + [f"Decision: {decision['rule']}: the decision is the prediction above.", ""]
    rates = decision["rates"]
    normal = CLASS_NAMES.index(NORMAL)
    normal_kept = int(test["confusion_matrix"][normal][normal])
    chosen = decision.get("rates_where_chosen") or {}
    target = decision.get("max_missed_rate")
    lines += [
        f"Decision rule: **{decision['rule']}**, else the most probable other class"
        + (
            f"; chosen for at most {target:.1%} of COVID + Viral Pneumonia films called Normal"
            if target is not None
            else ""
        )
        + (f", on {decision['chosen_on']}" if decision.get("chosen_on") else "")
        + (
            f" (there: {chosen['critical_called_normal']}/{chosen['critical']} called Normal, "
            f"{chosen['normal_kept']}/{chosen['normal']} Normal kept)"
            if chosen.get("critical")
            else ""
        )
        + ".",
        "",
        "| on the test films | COVID + Viral Pneumonia called Normal | Normal films kept Normal | accuracy |",
        "|---|---|---|---|",
        f"| the decision | {rates['critical_called_normal']}/{rates['critical']} | {rates['normal_kept']}/{rates['normal']} "
        f"({pct(rates['normal_kept_rate'])}) | {pct(decision['accuracy'])} |",
        f"| argmax (the prediction) | {test['critical_to_normal']}/{rates['critical']} | "
        f"{normal_kept}/{rates['normal']} ({pct(normal_kept / max(rates['normal'], 1))}) | {pct(test['accuracy'])} |",
        "",
    ]
    return lines


def _ci(c: Dict[str, float]) -> str:
    return f"{pct(c['value'])} [{pct(c['low'])}, {pct(c['high'])}]"


def present_lines(metrics: Dict[str, Any]) -> List[str]:
    """The report's section over the classes the evaluated films hold (``metrics.json`` ``classes_present``):
    recall and what each class was called, argmax and decision, then the same per source."""
    block = metrics.get("classes_present")
    if not block:
        return []
    arg, dec = block["argmax"], block["decision"]
    lines = [
        "## Over the classes present",
        "",
        f"{arg['images']} films of {len(arg['classes'])} class(es) ({', '.join(arg['classes'])}); stratified "
        f"bootstrap 95% intervals ({arg['bootstrap_resamples']} resamples). Accuracy over these classes: argmax "
        f"{_ci(arg['accuracy'])}, decision {_ci(dec['accuracy'])}.",
        "",
        "| true class | films | recall, argmax | recall, decision | called (argmax): "
        + " / ".join(CLASS_NAMES)
        + " | called Normal by the decision |",
        "|---|---|---|---|---|---|",
    ]
    for c in arg["classes"]:
        a, d = arg["per_class"][c], dec["per_class"][c]
        called = " / ".join(str(a["called"][k]) for k in CLASS_NAMES)
        lines.append(
            f"| {c} | {a['images']} | {_ci(a['recall'])} | {_ci(d['recall'])} | {called} | {d['called'][NORMAL]} |"
        )
    lines.append("")
    by_source = block.get("by_source")
    if by_source:
        lines += [
            "Per source (as the data names them):",
            "",
            "| source | true class | films | recall, argmax | recall, decision | called Normal: argmax / decision |",
            "|---|---|---|---|---|---|",
        ]
        for src, a_src in by_source["argmax"].items():
            d_src = by_source["decision"][src]
            for c in a_src["classes"]:
                a, d = a_src["per_class"][c], d_src["per_class"][c]
                lines.append(
                    f"| {src} | {c} | {a['images']} | {_ci(a['recall'])} | {_ci(d['recall'])} | "
                    f"{a['called'][NORMAL]} / {d['called'][NORMAL]} |"
                )
        lines.append("")
    return lines


def table1_lines(model_name: str, metrics: Dict[str, Any]) -> List[str]:
    """The study's Table 1 as markdown rows: this run's row, then the study's for the same model."""
    test = metrics["test"]
    train_acc = metrics.get("train", {}).get("accuracy")
    measured = f"{test['num_images']} test images"
    lines = [
        *TABLE1_HEADER,
        table1_row(f"{model_name} (this run)", measured, train_acc, test["accuracy"], test["to_normal"]),
    ]
    row = study_row(model_name)
    return lines + [study_table1_row(row, "study")] if row else lines


def write_report(
    path: Path,
    model_name: str,
    metrics: Dict[str, Any],
    run_info: Dict[str, Any],
    images: Optional[Sequence[str]] = None,
) -> None:
    """Write ``report.md``: the study's Table 1 row and per-class table for this model, beside the study's.

    Args:
        path: the file to write.
        model_name: the ``--model`` name (selects the study's rows).
        metrics: the ``metrics.json`` dict (``test`` required; ``validation``, ``train`` optional).
        run_info: facts to list (data, split, preprocessing, epochs, ...), as ``{label: value}``.
        images: image files beside the report to embed (default: the run folder's confusion matrix and
            training curves; missing ones are skipped).
    """
    lines = [
        f"# {model_name}: chest X-ray classification report",
        "",
        f"**{DISCLAIMER}** Images of each class in this database come largely from their own source, so a "
        "model can learn the source instead of the disease (DeGrave et al., Nature Machine Intelligence 2021).",
        "",
        "## Run",
        "",
        *[f"- {k}: {v}" for k, v in run_info.items()],
        "",
        *_study_tables(model_name, metrics),
        *decision_lines(metrics),
        *present_lines(metrics),
        *_validation_lines(metrics),
        *_figure_lines(path, metrics, images),
    ]
    path.write_text("\n".join(lines))


def _study_tables(model_name: str, metrics: Dict[str, Any]) -> List[str]:
    """Table 1 in the study's layout and the per-class table of test, each beside the study's own figures."""
    test = metrics["test"]
    lines = [
        "## Table 1 (the study's layout)",
        "",
        "Counts are test images of each class predicted as Normal; the study's primary aim is the fewest "
        "COVID and Viral Pneumonia images called Normal.",
        "",
        *table1_lines(model_name, metrics),
        "",
    ]
    if study_row(model_name):
        lines += [
            f"Study row: {STUDY_SOURCE}. Figures measured on different test sets are not directly comparable.",
            "",
        ]
    lines += [
        "## Per-class results (test)",
        "",
        "Precision = correct / predicted as the class; recall = correct / truly the class.",
        "",
        *per_class_lines(model_name, test),
        "",
    ]
    if model_name in STUDY_PER_CLASS:
        lines += ["The study printed these with precision and recall swapped; its values are shown corrected.", ""]
    auroc = f"Macro one-vs-rest AUROC: {test['auroc']:.4f}" if test.get("auroc") is not None else "AUROC: undefined"
    return lines + [auroc, ""]


def _validation_lines(metrics: Dict[str, Any]) -> List[str]:
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
    return [
        "## Validation" + role,
        "",
        f"Accuracy {pct(val['accuracy'])}; COVID + Viral Pneumonia predicted as Normal: "
        f"{sum(val['to_normal'].get(c, 0) for c in ('COVID', 'Viral Pneumonia'))}.",
        "",
    ]


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
