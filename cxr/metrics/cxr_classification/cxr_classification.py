# An `evaluate` metric module shipped inside cxr and loaded by path (Hub metric names need the internet).
"""Chest X-ray classification report: accuracy, per-class precision/recall/F1/support, the confusion
matrix (rows = true class), the study's "predicted as Normal" counts and macro one-vs-rest AUROC.

Precision of class k is TP / (number *predicted* k), the confusion matrix's column sum; recall is
TP / (number *truly* k), its row sum. (The study divided by the row sums for "precision", which
swapped the two.) A precision or recall whose denominator is zero is reported as 0.0, as
scikit-learn does with ``zero_division=0``; an AUROC for a class with no positive or no negative
example is undefined and left out of the macro mean.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    prediction_scores (`list` of `list` of `float`): per-class probabilities, one row per image.
    label_names (`list` of `str`): class names in index order.
    normal_label (`str`, default "Normal"): the class whose false assignments are counted.
Returns:
    accuracy (`float`), per_class (`{name: {precision, recall, f1, support}}`),
    confusion_matrix (`list` of `list` of `int`, rows = true class), to_normal (`{name: count}` for
    every class but Normal), auroc (`float` or None: macro one-vs-rest), auroc_per_class.
Examples:
    >>> metric = evaluate.load("cxr/metrics/cxr_classification")
    >>> r = metric.compute(predictions=[0, 1], references=[0, 0], prediction_scores=[[.9, .1], [.4, .6]],
    ...                    label_names=["COVID", "Normal"])
    >>> r["per_class"]["COVID"]["recall"]
    0.5
"""


def _binary_auroc(scores, positives):
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties (Mann-Whitney U)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CxrClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "prediction_scores": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, prediction_scores, label_names, normal_label="Normal"):
        label_names = list(label_names)
        k = len(label_names)
        pred = np.asarray(predictions, dtype=np.int64)
        ref = np.asarray(references, dtype=np.int64)
        scores = np.asarray(prediction_scores, dtype=np.float64).reshape(len(ref), -1)
        if scores.shape[1] != k:
            raise ValueError(f"prediction_scores have {scores.shape[1]} columns for {k} label names")
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (ref, pred), 1)
        tp = np.diag(cm)
        predicted = cm.sum(axis=0)
        actual = cm.sum(axis=1)
        precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
        auroc_per_class = {name: _binary_auroc(scores[:, i], ref == i) for i, name in enumerate(label_names)}
        defined = [v for v in auroc_per_class.values() if v is not None]
        normal = label_names.index(normal_label) if normal_label in label_names else None
        return {
            "accuracy": float(tp.sum() / max(len(ref), 1)),
            "per_class": {
                name: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(actual[i]),
                }
                for i, name in enumerate(label_names)
            },
            "confusion_matrix": cm.tolist(),
            "to_normal": {}
            if normal is None
            else {name: int(cm[i, normal]) for i, name in enumerate(label_names) if i != normal},
            "auroc": float(np.mean(defined)) if defined else None,
            "auroc_per_class": auroc_per_class,
            "num_images": int(len(ref)),
        }
