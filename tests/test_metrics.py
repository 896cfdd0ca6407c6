"""Metrics from the shipped `evaluate` module, checked against scikit-learn and a hand-worked case."""

import evaluate
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from cxr.labels import CLASS_NAMES, DATABASE
from cxr.metrics import METRIC_MODULE, compute_metrics, load_metric, selection_key


def test_module_is_loaded_by_path_with_evaluate():
    metric = load_metric()
    assert isinstance(metric, evaluate.Metric)
    assert METRIC_MODULE.is_dir() and (METRIC_MODULE / "cxr_classification.py").is_file()
    assert metric.name == "cxr_classification"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 4, n)
    probs = rng.dirichlet(np.ones(4) * 0.7, n)
    probs[np.arange(n), y] += rng.uniform(0, 0.5, n)  # better than chance, not perfect
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    m = compute_metrics(y, probs, DATABASE)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for i, name in enumerate(CLASS_NAMES):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert np.array_equal(m["confusion_matrix"], confusion_matrix(y, pred, labels=range(4)))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def _probs_for(pred):
    p = np.full((len(pred), 4), 0.1)
    p[np.arange(len(pred)), pred] = 0.7
    return p


def test_hand_worked_confusion_matrix_where_precision_and_recall_differ():
    # rows = true class, columns = predicted (COVID, Lung_Opacity, Normal, Viral Pneumonia)
    cm = np.array(
        [
            [8, 0, 2, 0],  # 10 COVID: 8 right, 2 called Normal
            [1, 5, 4, 0],  # 10 Lung_Opacity
            [1, 0, 9, 0],  # 10 Normal
            [0, 0, 1, 4],  # 5 Viral Pneumonia
        ]
    )
    y = np.repeat(np.arange(4), cm.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(4), row) for row in cm])
    m = compute_metrics(y, _probs_for(pred), DATABASE)
    assert m["confusion_matrix"] == cm.tolist()
    covid = m["per_class"]["COVID"]
    assert covid["recall"] == pytest.approx(8 / 10)  # of the 10 true COVID, 8 found
    assert covid["precision"] == pytest.approx(8 / 10)  # of the 10 predicted COVID, 8 right
    normal = m["per_class"]["Normal"]
    assert normal["recall"] == pytest.approx(9 / 10)
    assert normal["precision"] == pytest.approx(9 / 16)  # the study's swap would have said 0.9
    viral = m["per_class"]["Viral Pneumonia"]
    assert (viral["precision"], viral["recall"]) == pytest.approx((1.0, 4 / 5))
    assert viral["f1"] == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert m["to_normal"] == {"COVID": 2, "Lung_Opacity": 4, "Viral Pneumonia": 1}
    assert m["critical_to_normal"] == 3
    assert m["accuracy"] == pytest.approx(26 / 35)


def test_class_never_predicted_has_zero_precision_not_nan():
    y = np.array([0, 1, 2, 3])
    m = compute_metrics(y, _probs_for(np.array([0, 0, 2, 2])), DATABASE)
    assert m["per_class"]["Viral Pneumonia"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_auroc_undefined_classes_left_out_of_the_mean():
    y = np.array([0, 0, 2, 2])
    probs = np.array([[0.9, 0, 0.1, 0], [0.6, 0, 0.4, 0], [0.3, 0, 0.7, 0], [0.2, 0, 0.8, 0]])
    m = compute_metrics(y, probs, DATABASE)
    assert m["auroc_per_class"]["Lung_Opacity"] is None
    assert m["auroc"] == pytest.approx(1.0)


def test_selection_prefers_accuracy_then_fewer_critical_called_normal():
    a = {"accuracy": 0.9, "critical_to_normal": 4}
    b = {"accuracy": 0.9, "critical_to_normal": 2}
    c = {"accuracy": 0.91, "critical_to_normal": 18}
    assert max([a, b, c], key=selection_key) is c
    assert max([a, b], key=selection_key) is b
