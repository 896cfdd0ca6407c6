"""The cross-validation report (``cv.md``), rendered from its record (``cv.json``): out-of-fold figures with their
intervals, the ECE a calibrated model would show by chance, the per-fold table and each fold's error figure.
Research use only — not for diagnosis."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from cxr.labels import DISCLAIMER, NORMAL
from cxr.reporting.run_facts import recipe_summary
from cxr.run_folder import CVFolder

__all__ = ["render_cv_report"]

_ROWS = (
    ("accuracy", "accuracy", True),
    ("covid_recall", "COVID recall", True),
    ("covid_to_normal", f"COVID → {NORMAL}", False),
    ("viral_pneumonia_to_normal", f"Viral Pneumonia → {NORMAL}", False),
    ("lung_opacity_to_normal", f"Lung_Opacity → {NORMAL}", False),
    ("macro_auroc", "macro AUROC", False),
    ("ece", "ECE (15 bins)", False),
)


def _fmt(name: str, v: Optional[float], pct: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{int(round(v))}" if name.endswith("to_normal") else f"{v:.3f}"


def render_cv_report(result: Dict[str, Any]) -> str:
    """``cv.md`` from a cross-validation's ``cv.json`` record (:func:`cxr.training.cv.run_cv`)."""
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
        "| out of fold | value | 95% interval |",
        "|---|---|---|",
    ]
    for key, label, pct in _ROWS:
        s = result["out_of_fold"][key]
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
    lines += _per_fold_lines(result["per_fold"])
    cv = CVFolder(".")
    lines += [
        "",
        f"Files: `{cv.folds.name}`, `{cv.splits.name}/fold-K.json`, `fold-K/` (each a full run folder), `{cv.oof.name}`.",
        "",
    ]
    figures = [f for f in result["per_fold"] if f.get("errors_figure")]
    if figures:
        lines += [
            "Each fold's misclassified test films (by its decision rule), COVID and Viral Pneumonia called Normal "
            "first, with Grad-CAM — for this report only (the films are the dataset's):",
            "",
        ]
        lines += [f"![fold {f['fold']}]({f['errors_figure']})" for f in figures] + [""]
    return "\n".join(lines)


def _per_fold_lines(per_fold) -> List[str]:
    """The per-fold table: each fold's headline figures, its kept epoch, temperature and Normal threshold."""
    lines = [
        "",
        "Per fold:",
        "",
        "| fold | images | accuracy | COVID recall | COVID → Normal | Viral Pn. → Normal | macro AUROC | ECE | "
        "kept epoch | temperature | Normal threshold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in per_fold:
        t = "—" if f["temperature"] is None else f"{f['temperature']:.3f}"
        op = "—" if f.get("normal_threshold") is None else f"{f['normal_threshold']:.3f}"
        lines.append(
            f"| {f['fold']} | {f['images']} | {_fmt('a', f['accuracy'], True)} | "
            f"{_fmt('c', f['covid_recall'], True)} | {f['covid_to_normal']} | {f['viral_pneumonia_to_normal']} | "
            f"{_fmt('auroc', f['macro_auroc'], False)} | {_fmt('ece', f['ece'], False)} | {f['kept_epoch']} | {t} | {op} |"
        )
    return lines
