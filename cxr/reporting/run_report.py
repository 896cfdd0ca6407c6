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
    "plot_confusion_matrix",
    "plot_training_curves",
    "plot_operating_point",
    "plot_error_gallery",
    "recipe_summary",
    "kept_description",
    "calibration_description",
    "present_lines",
    "shift_description",
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
    test = metrics["test"]
    lines = [
        f"# {model_name}: chest X-ray classification report",
        "",
        f"**{DISCLAIMER}** Images of each class in this database come largely from their own source, so a "
        "model can learn the source instead of the disease (DeGrave et al., Nature Machine Intelligence 2021).",
        "",
        "## Run",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in run_info.items()]
    lines += [
        "",
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
    lines += [
        f"Macro one-vs-rest AUROC: {test['auroc']:.4f}" if test.get("auroc") is not None else "AUROC: undefined",
        "",
    ]
    lines += decision_lines(metrics)
    lines += present_lines(metrics)
    val = metrics.get("validation")
    if val:
        lines += [
            "## Validation"
            + (
                " (trained on: --final-fit refits on training + validation)"
                if metrics.get("final_fit")
                else " (picked the kept epoch)"
                if metrics.get("keep", "best") == "best"
                else " (held out; the last epoch is kept)"
            ),
            "",
            f"Accuracy {pct(val['accuracy'])}; COVID + Viral Pneumonia predicted as Normal: "
            f"{sum(val['to_normal'].get(c, 0) for c in ('COVID', 'Viral Pneumonia'))}.",
            "",
        ]
    run = RunFolder(path.parent)
    shown = (run.confusion_matrix, run.training_curves, run.operating_point_plot, run.errors_plot)
    for img in images if images is not None else [p.name for p in shown]:
        if (path.parent / img).exists():
            lines += [f"![{img}]({img})", ""]
            if img == run.errors_plot.name and metrics.get("errors_shown"):
                lines += ["Films shown, in order: " + ", ".join(f"`{f}`" for f in metrics["errors_shown"]) + ".", ""]
    path.write_text("\n".join(lines))


def plot_confusion_matrix(path: Path, confusion: Sequence[Sequence[int]], title: str = "") -> None:
    """Save the confusion matrix (rows = true class) with counts, coloured by row share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=120)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    normal = CLASS_NAMES.index(NORMAL)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontweight="bold" if j == normal and i != normal and cm[i, j] else "normal",
            )
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title or "Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_operating_point(path: Path, labels, probabilities, operating_point, part: str = "test") -> None:
    """Save the threshold's trade-off on ``part``: the share of COVID + Viral Pneumonia films called Normal and
    the share of Normal films flagged (not called Normal), over the threshold on P(Normal), with the model's
    operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr.metrics.operating_point import operating_rates, threshold_curve

    t, missed, flagged = threshold_curve(labels, probabilities)
    at = operating_rates(labels, probabilities, operating_point.normal_threshold)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(t, 100 * missed, color="tab:red", label="COVID + Viral Pneumonia called Normal")
    ax.plot(t, 100 * flagged, color="tab:blue", label="Normal films flagged (not called Normal)")
    ax.axvline(operating_point.normal_threshold, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"{operating_point.rule}\n{part}: {at['critical_called_normal']}/{at['critical']} missed, "
        f"{at['normal'] - at['normal_kept']}/{at['normal']} Normal flagged",
        xy=(operating_point.normal_threshold, 50),
        xytext=(0.03, 0.55),
        textcoords="axes fraction",
        fontsize=8,
        arrowprops={"arrowstyle": "->", "linewidth": 0.8},
    )
    ax.set_xlabel("threshold on the calibrated P(Normal)")
    ax.set_ylabel(f"% of each group of {part} films")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"The operating point on {part} (n={len(labels)})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_error_gallery(path: Path, entries: Sequence[Any], wrong: int, title: str = "") -> None:
    """Save the misclassified films as a grid: each (RGB heat map over the film, caption, whether it is a COVID
    or Viral Pneumonia film called Normal — captioned in red) of ``entries``; ``wrong`` films were misclassified
    in all (the figure may show fewer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not entries:
        return
    cols = min(4, len(entries))
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows + 0.5), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption, critical_to_normal) in zip(axes.flat, entries):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7, color="tab:red" if critical_to_normal else "black")
    shown = f"{len(entries)} of {wrong}" if wrong > len(entries) else f"all {wrong}"
    fig.suptitle(
        f"{title or 'Misclassified films'}: {shown}, COVID and Viral Pneumonia called Normal first", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(
    path: Path, history: Sequence[Dict[str, Any]], kept_epoch: Optional[int] = None, kept_rule: str = "best"
) -> None:
    """Save loss and accuracy per epoch, training (augmented) and validation, marking the kept epoch
    (``kept_rule``: which one was kept, e.g. ``best`` or ``last``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="grey", ls="--", lw=1, label=f"kept ({kept_rule})")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def recipe_summary(config: Dict[str, Any]) -> str:
    """One line naming a run's recipe from its ``run_config.json`` ``config`` (older runs lack the newer keys).

    Example:
        >>> recipe_summary({"optimizer": "adam", "lr": 0.0005, "lr_scheduler": "constant", "batch_size": 64,
        ...                 "epochs": 20, "seed": 1})
        'adam lr 0.0005, constant schedule, batch 64, 20 epochs, seed 1, augmentation study'
    """
    c = config
    parts = [
        f"{c['optimizer']} lr {c['lr']}" + (f" weight decay {c['weight_decay']}" if c.get("weight_decay") else ""),
        f"{c['lr_scheduler']} schedule"
        + (f" after {c['warmup_epochs']} warm-up epoch(s)" if c.get("warmup_epochs") else ""),
        f"batch {c['batch_size']}",
        f"{c['epochs']} epochs",
        f"seed {c['seed']}",
        f"augmentation {c.get('augment', 'study')}",
    ]
    if c.get("label_smoothing"):
        parts.append(f"label smoothing {c['label_smoothing']}")
    if c.get("ema_decay"):
        parts.append(f"weight EMA {c['ema_decay']}")
    if c.get("layer_decay") not in (None, 1.0):
        parts.append(f"layer-wise LR decay {c['layer_decay']}")
    if c.get("drop_path"):
        parts.append(f"drop path {c['drop_path']}")
    if c.get("freeze_bn_stats"):
        parts.append("batch-norm statistics frozen")
    if c.get("clip_grad_norm"):
        parts.append(f"gradients clipped at norm {c['clip_grad_norm']}")
    return ", ".join(parts)


def kept_description(metrics: Dict[str, Any]) -> str:
    """Which model a run kept and why, from its ``metrics.json`` (older runs only say ``best_epoch``)."""
    epoch = metrics.get("kept_epoch", metrics.get("best_epoch"))
    if metrics.get("final_fit"):
        calibrated = ", whose validation images also gave the temperature" if metrics.get("calibration") else ""
        return (
            f"the last epoch ({epoch}) of a refit on training + validation; the epoch count is the one kept by a "
            f"first run on training alone (in {metrics['final_fit']['holdout']}/){calibrated}"
        )
    if metrics.get("keep") == "last":
        return f"the last epoch ({epoch})"
    return (
        f"epoch {epoch}, the best on validation (accuracy, ties broken by fewer COVID + Viral Pneumonia images "
        "predicted as Normal)"
    )


def calibration_description(calibration: Optional[Dict[str, Any]]) -> str:
    """The report's calibration line from ``metrics.json`` ``calibration``: the temperature, what it was fitted on,
    and per part the ECE before -> after with the ECE a calibrated model would show there by chance."""
    if calibration is None:
        return "off (--no-calibrate): probabilities are the softmax of the logits"
    parts = []
    for part, name in (("validation", "validation"), ("test", "test"), ("held_out", "the films it was fitted on")):
        c = calibration.get(part)
        if not c:
            continue
        text = f"{name} {c['ece_before']:.3f} -> {c['ece_after']:.3f}"
        chance = c.get("ece_if_calibrated")
        if chance:
            text += f" (by chance alone on {c['films']} films: {chance['median']:.3f}, 95%: {chance['p95']:.3f})"
        parts.append(text)
    return (
        f"temperature {calibration['temperature']:.3f} ({calibration['note']}; NLL), saved in model/config.json and "
        f"applied to every probability here; expected calibration error (15 bins), {'; '.join(parts)} — an ECE "
        "below its chance 95% is no evidence of miscalibration"
    )


def shift_description(shift: Optional[Dict[str, Any]], has_guard: bool = True) -> str:
    """The report's line on ``metrics.json`` ``shift`` (:func:`cxr.metrics.shift.shift_summary`)."""
    if shift is None:
        return (
            "not measured: the model was saved without an out-of-distribution guard"
            if not has_guard
            else "not measured: the model's guard was saved without its validation scores (retrain to get them)"
        )
    beyond = shift["beyond_validation_p95"]
    verdict = (
        "**these films are not like the ones this model was validated on**"
        if shift["shifted"]
        else "no shift detected — which does not show that the films are like the training films (the guard's "
        "distances missed films from another hospital: bench/RESULTS.md, 'Dataset shift')"
    )
    return (
        f"{verdict}: {beyond['count']}/{shift['films']} films ({pct(beyond['share'])}) beyond the validation films' "
        f"95th percentile of the guard's distance (5% expected; binomial p {beyond['p_value']:.2g}); median distance "
        f"{shift['median']:.4f} against {shift['validation_median']:.4f} ({shift['direction']}); Kolmogorov-Smirnov "
        f"D {shift['ks']['statistic']:.2f}, p {shift['ks']['p_value']:.2g} (against {shift['validation_films']} "
        "validation films)"
    )
