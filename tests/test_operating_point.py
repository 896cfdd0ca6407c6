"""The decision rule and its threshold, on hand-made probabilities that put each edge where it matters (a model's
real probabilities are checked where the rule is saved and applied: training, cxr.eval, cxr.predict)."""

import numpy as np
import pytest

from cxr.labels import CLASS_NAMES, DATABASE
from cxr.metrics.guarantee import miss_bound
from cxr.metrics.operating_point import (
    OperatingPoint,
    check_missed_rate,
    choose_operating_point,
    decide,
    operating_rates,
    threshold_curve,
)

NORMAL, COVID, VP = CLASS_NAMES.index("Normal"), CLASS_NAMES.index("COVID"), CLASS_NAMES.index("Viral Pneumonia")


def _probs(p_normal, other=COVID):
    p = np.zeros((len(p_normal), 4))
    p[:, NORMAL] = p_normal
    p[:, other] = 1 - np.asarray(p_normal)
    return p


def test_a_film_just_under_the_threshold_is_not_called_normal():
    p = _probs([0.8999999, 0.9, 0.95])
    assert decide(p, 0.9, DATABASE).tolist() == [COVID, NORMAL, NORMAL]
    assert decide(p, None, DATABASE).tolist() == [NORMAL, NORMAL, NORMAL]  # argmax without an operating point


def test_below_the_threshold_the_likeliest_other_class_is_called():
    p = np.array([[0.1, 0.15, 0.6, 0.15], [0.05, 0.3, 0.6, 0.05]])
    assert decide(p, 0.7, DATABASE).tolist() == [1, 1] and decide(p, 0.5, DATABASE).tolist() == [NORMAL, NORMAL]


@pytest.mark.parametrize("kind", ["expected", "confidence"])
def test_the_chosen_threshold_is_the_lowest_whose_guarantee_meets_the_target(kind):
    rng = np.random.default_rng(0)
    y = np.array([COVID] * 100 + [VP] * 100 + [NORMAL] * 100)
    p_normal = np.concatenate([rng.beta(1, 12, 200), rng.beta(12, 1, 100)])
    p = _probs(p_normal)
    for rate in (0.02, 0.05, 0.1):
        op = choose_operating_point(y, p, DATABASE, rate, "300 films", kind)
        t, g = op.normal_threshold, op.guarantee
        missed = operating_rates(y, p, t, DATABASE)["critical_called_normal"]
        assert g.met and g.missed == missed and miss_bound(kind, missed, 200) <= rate
        lower = operating_rates(y, p, t - 0.001, DATABASE)["critical_called_normal"]
        assert miss_bound(kind, lower, 200) > rate  # one grid step lower, the guarantee misses the target
        assert round(t, 3) == t


def test_a_threshold_is_never_set_on_the_value_it_must_exclude():
    y = np.array([COVID, COVID, NORMAL])
    p = _probs([0.912, 0.1, 0.99])
    op = choose_operating_point(y, p, DATABASE, 0.5, "3 films")
    assert op.normal_threshold > 0.912 and op.decide(p).tolist() == [COVID, COVID, NORMAL]


@pytest.mark.parametrize("rate", [0, -0.01, 1, 1.5, float("nan"), "0.01"])
def test_an_out_of_range_target_is_one_sentence(rate):
    with pytest.raises(ValueError, match="above 0 and below 1"):
        check_missed_rate(rate)


def test_no_critical_film_to_choose_on_gives_no_point():
    assert choose_operating_point([NORMAL, NORMAL], _probs([0.9, 0.8]), DATABASE, 0.01, "2 films") is None


def test_the_curve_runs_from_everything_normal_to_nothing_normal():
    y = np.array([COVID, VP, NORMAL, NORMAL])
    t, missed, flagged = threshold_curve(y, _probs([0.2, 0.6, 0.7, 0.95]), DATABASE)
    assert missed[0] == 1 and flagged[0] == 0 and flagged[-1] == 1 and missed[-1] == 0
    assert np.all(np.diff(missed) <= 0) and np.all(np.diff(flagged) >= 0)


def test_an_operating_point_round_trips_through_config_and_says_its_rule():
    op = OperatingPoint(0.913, DATABASE, 0.01, "600 out-of-fold predictions", {"missed_rate": 0.01})
    assert OperatingPoint.from_config(op.to_config(), DATABASE) == op
    assert op.rule == "Normal only when P(Normal) ≥ 0.913"
    assert OperatingPoint.from_config(None, DATABASE) is None
    with pytest.raises(ValueError, match="not a probability"):
        OperatingPoint.from_config({"normal_threshold": 1.5}, DATABASE)
