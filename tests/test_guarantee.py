"""The operating point's finite-sample guarantee, worked by hand, and the class settings it is asked of."""

import math

import numpy as np
import pytest

from cxr.errors import CXRError
from cxr.labels import DATABASE, Classes
from cxr.metrics.guarantee import guaranteed_threshold, miss_bound
from cxr.metrics.operating_point import OperatingPoint, choose_operating_point, decide


def test_bounds_by_hand():
    # conformal risk control: (k + 1) / (n + 1)
    assert miss_bound("expected", 0, 9) == pytest.approx(0.1)
    assert miss_bound("expected", 2, 99) == pytest.approx(0.03)
    # binomial: with no miss, P(no miss | rate p) = (1 - p)^n = 1 - confidence  =>  p = 1 - 0.05^(1/n)
    assert miss_bound("confidence", 0, 10, 0.95) == pytest.approx(1 - 0.05**0.1)
    assert miss_bound("confidence", 0, 299, 0.95) == pytest.approx(1 - 0.05 ** (1 / 299))
    # one miss in 10 at 95%: the p at which P(X <= 1) = 0.05, i.e. (1-p)^10 + 10 p (1-p)^9 = 0.05
    p = miss_bound("confidence", 1, 10, 0.95)
    assert (1 - p) ** 10 + 10 * p * (1 - p) ** 9 == pytest.approx(0.05, abs=1e-9)
    assert p == pytest.approx(0.3942, abs=1e-4)


def test_threshold_worked_example():
    # 9 critical films' P(Normal); target 20%: (k + 1) / 10 <= 0.2 allows k = 1 film at or above the threshold
    scores = np.array([0.95, 0.90, 0.70, 0.50, 0.40, 0.30, 0.20, 0.10, 0.05])
    t, g = guaranteed_threshold(scores, 0.2, "expected")
    assert t == 0.901  # just above the second highest: only 0.95 reaches it
    assert (g.missed, g.critical_films, g.met) == (1, 9, True)
    assert g.bound == pytest.approx(0.2)
    # at 10% only k = 0 is allowed: just above the highest
    t, g = guaranteed_threshold(scores, 0.1, "expected")
    assert (t, g.missed, g.met) == (0.951, 0, True)


def test_too_few_films_gives_the_attainable_bound():
    scores = np.linspace(0.0, 0.6, 30)
    t, g = guaranteed_threshold(scores, 0.01, "confidence", 0.95)
    assert not g.met and g.missed == 0 and t == 0.601
    assert g.bound == pytest.approx(1 - 0.05 ** (1 / 30)) == pytest.approx(g.attainable)
    assert "cannot be guaranteed" in g.sentence("Normal", "COVID") and "95% confidence" in g.sentence("Normal", "COVID")


@pytest.mark.parametrize("target", [0, 1, 1.5, -0.1, math.nan])
def test_bad_targets(target):
    with pytest.raises(ValueError, match="above 0 and below 1"):
        guaranteed_threshold(np.array([0.5]), target)


def test_expected_guarantee_holds_over_random_splits():
    """Exchangeable scores: over many calibration/test draws the mean realised rate is at most the target (here
    5/101 = 0.0495 in expectation: 4 misses allowed among 100), within three standard errors of the mean."""
    rng = np.random.default_rng(0)
    target, rates = 0.05, []
    for _ in range(2000):
        cal, test = rng.beta(1, 6, 100), rng.beta(1, 6, 1000)
        t, _ = guaranteed_threshold(cal, target, "expected")
        rates.append(float((test >= t).mean()))
    rates = np.array(rates)
    assert rates.mean() <= target + 3 * rates.std() / np.sqrt(len(rates))
    assert rates.mean() > 0.8 * target  # and not by refusing everything
    # the confidence guarantee: the rate is at most the target in at least 95% of draws
    over = 0
    for _ in range(300):
        cal, test = rng.beta(1, 6, 300), rng.beta(1, 6, 3000)
        t, g = guaranteed_threshold(cal, target, "confidence", 0.95)
        over += float((test >= t).mean()) > target
    assert over / 300 <= 0.05 + 3 * (0.05 * 0.95 / 300) ** 0.5


def test_classes_defaults_and_bad_settings():
    assert Classes.resolve(DATABASE.names) == DATABASE
    three = Classes.resolve(["COVID", "Normal", "Tuberculosis"])
    assert (three.negative, three.critical) == ("Normal", ("COVID",))
    assert Classes.resolve(["Healthy", "Sick"]).negative is None
    assert Classes.resolve(["Healthy", "Sick"], "Healthy").critical == ("Sick",)
    for args, message in [
        ((["Normal"],), "at least two classes"),
        ((["A", "B"], "Normal"), "--negative-class 'Normal' is not a class"),
        ((["A", "B"], "A", "C"), "--critical-classes C: not a class"),
        ((["A", "B"], "A", "A,B"), "includes the negative class"),
        ((["A", "B"], "none", "B"), "needs a negative class"),
    ]:
        with pytest.raises(CXRError, match=message):
            Classes.resolve(*args)


def test_decision_uses_the_models_negative_class():
    classes = Classes.resolve(["Healthy", "TB"], "Healthy")
    p = np.array([[0.8, 0.2], [0.6, 0.4]])
    assert decide(p, 0.7, classes).tolist() == [0, 1]
    op = choose_operating_point([1, 1, 0], np.array([[0.3, 0.7], [0.1, 0.9], [0.9, 0.1]]), classes, 0.5, "3 films")
    assert op.rule.startswith("Healthy only when P(Healthy)")
    back = OperatingPoint.from_config(op.to_config(), classes)
    assert back == op
    assert choose_operating_point([0, 1], p, Classes.resolve(["Healthy", "TB"]), 0.5, "x") is None  # no negative
