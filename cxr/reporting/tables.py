"""The tables every report shows, rendered once: the run report (``report.md``), the study report
(``study.md``) and the model card all take their Table 1 and per-class rows from here.

A run's classes are its own (:class:`~cxr.labels.Classes`, ``metrics.json``'s ``classes``): the per-class rows name
them, and Table 1 counts each class's test images called the run's negative class. The study's layout — its
columns, its abbreviations and its published rows beside ours — is kept for a model of the database's four classes
with ``Normal`` as the negative class (:func:`is_study_classes`), the only one its figures compare with.

Example:
    >>> pct(0.96667), pct(None), interval((0.962, 0.947, 0.977))
    ('96.67%', '–', '96.2% [94.7, 97.7]')
    >>> table1_row("logreg (this run)", "60 test images", 0.9, 0.85, {"COVID": 2, "Viral Pneumonia": 0})
    '| logreg (this run) | 60 test images | 90.00% | 85.00% | 2 | 0 | – |'
    >>> tb = Classes.resolve(["Normal", "Tuberculosis"])
    >>> table1_header(tb)[0]
    '| model | measured on | train acc | test acc | Tuberculosis→Normal |'
    >>> table1_row("tb (this run)", "40 test images", None, 0.9, {"Tuberculosis": 3}, tb)
    '| tb (this run) | 40 test images | – | 90.00% | 3 |'
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from cxr.labels import DATABASE, Classes
from cxr.reporting.study_reference import STUDY_PER_CLASS

__all__ = [
    "pct",
    "interval",
    "TO_NORMAL_COLUMNS",
    "TABLE1_HEADER",
    "record_classes",
    "is_study_classes",
    "is_study_question",
    "and_join",
    "to_negative_columns",
    "table1_columns",
    "table1_header",
    "table1_row",
    "study_table1_row",
    "per_class_lines",
]

#: The study's Table 1 count columns, in its order: images of each class called Normal (the database's classes).
TO_NORMAL_COLUMNS = ("COVID", "Viral Pneumonia", "Lung_Opacity")
#: The study's Table 1 header and separator rows.
TABLE1_HEADER = [
    "| model | measured on | train acc | test acc | COVID→Normal | Viral Pn.→Normal | Lung Op.→Normal |",
    "|---|---|---|---|---|---|---|",
]
#: How many test images the study's own figures were measured on.
STUDY_TEST_IMAGES = "2,116 test images"


def record_classes(record: Mapping[str, Any]) -> Classes:
    """The classes of a run's record (``metrics.json``, ``cv.json``): its ``classes`` entry
    (:meth:`Classes.to_dict`), or, for a record written before runs kept their classes, the database's
    (:data:`~cxr.labels.DATABASE`: every earlier run was of its four classes)."""
    entry = record.get("classes")
    return Classes.from_dict(entry) if entry else DATABASE


def is_study_classes(classes: Classes) -> bool:
    """Whether the study's layout and published figures apply: ``classes`` are the database's four, in its order,
    with ``Normal`` as the negative class (the critical ones do not change its columns)."""
    return classes.names == DATABASE.names and classes.negative == DATABASE.negative


def is_study_question(classes: Classes) -> bool:
    """Whether ``classes`` are the database's with the study's question (COVID and Viral Pneumonia must not be called
    Normal): the reports then word it as the study did."""
    return classes == DATABASE


def and_join(names: Sequence[str]) -> str:
    """Names in words: ``COVID``, ``COVID and Viral Pneumonia``, ``A, B and C``.

    Example:
        >>> and_join(["A"]), and_join(["A", "B"]), and_join(["A", "B", "C"])
        ('A', 'A and B', 'A, B and C')
    """
    names = list(names)
    if len(names) < 2:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def to_negative_columns(classes: Classes) -> Tuple[str, ...]:
    """The classes whose images called the negative class a table counts: the critical ones first, then the other
    non-negative ones, each in the classes' order; none without a negative class."""
    if classes.negative is None:
        return ()
    others = tuple(c for c in classes.names if c != classes.negative and c not in classes.critical)
    return tuple(classes.critical) + others


def table1_columns(classes: Optional[Classes] = None) -> Tuple[str, ...]:
    """Table 1's count columns for ``classes``: the study's (:data:`TO_NORMAL_COLUMNS`) for the database's classes
    or ``None``, else :func:`to_negative_columns`."""
    if classes is None or is_study_classes(classes):
        return TO_NORMAL_COLUMNS
    return to_negative_columns(classes)


def table1_header(classes: Classes) -> List[str]:
    """Table 1's header and separator rows for ``classes``: the study's (:data:`TABLE1_HEADER`) for the
    database's classes; else a column per class called the negative one (none without a negative class)."""
    if is_study_classes(classes):
        return list(TABLE1_HEADER)
    columns = table1_columns(classes)
    return [
        "| model | measured on | train acc | test acc |" + "".join(f" {c}→{classes.negative} |" for c in columns),
        "|---|---|---|---|" + "---|" * len(columns),
    ]


def pct(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals; ``–`` for a missing value."""
    return "–" if x is None else f"{100 * x:.2f}%"


def interval(t: Sequence[float]) -> str:
    """``(estimate, low, high)`` fractions as ``96.2% [94.7, 97.7]``."""
    est, lo, hi = t
    return f"{100 * est:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def table1_row(
    label: str,
    measured_on: str,
    train_acc: Optional[float],
    test_acc: Optional[float],
    to_normal: Mapping[str, int],
    classes: Optional[Classes] = None,
) -> str:
    """One Table 1 row measured here (fractions; counts of images called the negative class, ``–`` where missing).

    Args:
        classes: the run's classes, which choose the count columns (:func:`table1_columns`); ``None``: the study's
            columns (the study report, of the database's classes).
    """
    cells = [label, measured_on, pct(train_acc), pct(test_acc)]
    cells += [str(to_normal.get(c, "–")) for c in table1_columns(classes)]
    return "| " + " | ".join(cells) + " |"


def study_table1_row(row: Dict[str, Any], suffix: str) -> str:
    """The study's published Table 1 row (percentages as printed), labelled ``<model> (<suffix>)``."""
    counts = " | ".join(str(row["to_normal"][c]) for c in TO_NORMAL_COLUMNS)
    return (
        f"| {row['label']} ({suffix}) | {STUDY_TEST_IMAGES} | {row['train_accuracy']:.2f}% | "
        f"{row['test_accuracy']:.2f}% | {counts} |"
    )


def per_class_lines(model_name: str, split: Dict[str, Any], classes: Optional[Classes] = None) -> List[str]:
    """Per-class precision/recall/F1/support as markdown rows, with the study's (corrected) beside for a model of
    the classes the study had.

    Args:
        model_name: the ``--model`` name (selects the study's figures).
        split: a ``metrics.json`` split (``per_class``).
        classes: the run's classes, whose rows these are in order; ``None``: those of ``split["per_class"]``, in
            its order (the model's).
    """
    names = list(split["per_class"]) if classes is None else list(classes.names)
    study = STUDY_PER_CLASS.get(model_name)
    if study and sorted(study) != sorted(names):
        study = None  # the study's figures are of other classes
    head = "| class | precision | recall | F1 | support |"
    sep = "|---|---|---|---|---|"
    if study:
        head += " study precision | study recall | study F1 |"
        sep += "---|---|---|"
    lines = [head, sep]
    for name in names:
        pc = split["per_class"][name]
        line = f"| {name} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pct(pc['f1'])} | {pc['support']} |"
        if study:
            s = study[name]
            line += f" {s['precision']:.2f}% | {s['recall']:.2f}% | {s['f1']:.2f}% |"
        lines.append(line)
    return lines
