"""The tables every report shows, rendered once: the run report (``report.md``), the study report
(``study.md``) and the model card all take their Table 1 and per-class rows from here.

Example:
    >>> pct(0.96667), pct(None), interval((0.962, 0.947, 0.977))
    ('96.67%', '–', '96.2% [94.7, 97.7]')
    >>> table1_row("logreg (this run)", "60 test images", 0.9, 0.85, {"COVID": 2, "Viral Pneumonia": 0})
    '| logreg (this run) | 60 test images | 90.00% | 85.00% | 2 | 0 | – |'
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from cxr.labels import CLASS_NAMES
from cxr.reporting.study_reference import STUDY_PER_CLASS

__all__ = ["pct", "interval", "TO_NORMAL_COLUMNS", "TABLE1_HEADER", "table1_row", "study_table1_row", "per_class_lines"]

#: Table 1's count columns, in the study's order: images of each class called Normal.
TO_NORMAL_COLUMNS = ("COVID", "Viral Pneumonia", "Lung_Opacity")
#: Table 1's header and separator rows.
TABLE1_HEADER = [
    "| model | measured on | train acc | test acc | COVID→Normal | Viral Pn.→Normal | Lung Op.→Normal |",
    "|---|---|---|---|---|---|---|",
]
#: How many test images the study's own figures were measured on.
STUDY_TEST_IMAGES = "2,116 test images"


def pct(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals; ``–`` for a missing value."""
    return "–" if x is None else f"{100 * x:.2f}%"


def interval(t: Sequence[float]) -> str:
    """``(estimate, low, high)`` fractions as ``96.2% [94.7, 97.7]``."""
    est, lo, hi = t
    return f"{100 * est:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def table1_row(
    label: str, measured_on: str, train_acc: Optional[float], test_acc: Optional[float], to_normal: Mapping[str, int]
) -> str:
    """One Table 1 row measured here (fractions; counts of images called Normal, ``–`` where missing)."""
    counts = " | ".join(str(to_normal.get(c, "–")) for c in TO_NORMAL_COLUMNS)
    return f"| {label} | {measured_on} | {pct(train_acc)} | {pct(test_acc)} | {counts} |"


def study_table1_row(row: Dict[str, Any], suffix: str) -> str:
    """The study's published Table 1 row (percentages as printed), labelled ``<model> (<suffix>)``."""
    counts = " | ".join(str(row["to_normal"][c]) for c in TO_NORMAL_COLUMNS)
    return (
        f"| {row['label']} ({suffix}) | {STUDY_TEST_IMAGES} | {row['train_accuracy']:.2f}% | "
        f"{row['test_accuracy']:.2f}% | {counts} |"
    )


def per_class_lines(model_name: str, split: Dict[str, Any]) -> List[str]:
    """Per-class precision/recall/F1/support as markdown rows, with the study's (corrected) beside."""
    study = STUDY_PER_CLASS.get(model_name)
    head = "| class | precision | recall | F1 | support |"
    sep = "|---|---|---|---|---|"
    if study:
        head += " study precision | study recall | study F1 |"
        sep += "---|---|---|"
    lines = [head, sep]
    for name in CLASS_NAMES:
        pc = split["per_class"][name]
        line = f"| {name} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pct(pc['f1'])} | {pc['support']} |"
        if study:
            s = study[name]
            line += f" {s['precision']:.2f}% | {s['recall']:.2f}% | {s['f1']:.2f}% |"
        lines.append(line)
    return lines
