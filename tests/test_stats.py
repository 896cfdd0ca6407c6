"""Bootstrap intervals, McNemar's test, ECE and temperature scaling against hand-computed cases."""

import math

import numpy as np
import pytest
from scipy.special import softmax

from cxr.metrics.stats import (
    accuracy_of,
    apply_temperature,
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature,
    mcnemar_test,
    negative_log_likelihood,
    recall_of,
    stratified_bootstrap_ci,
)


def test_stratified_bootstrap_small_case():
    # class 0: both right; class 1: one of two right. Resampling within classes, accuracy is
    # (2 + k) / 4 with k ~ Binomial(2, 1/2): 0.5, 0.75, 1.0 with probabilities 1/4, 1/2, 1/4.
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    est, lo, hi = stratified_bootstrap_ci(y, pred, accuracy_of, n_resamples=1000, seed=3)
    assert (est, lo, hi) == (0.75, 0.5, 1.0)


def test_bootstrap_width_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2, 3], 100)
    pred = np.where(rng.random(400) < 0.8, y, (y + 1) % 4)
    est, lo, hi = stratified_bootstrap_ci(y, pred, accuracy_of, n_resamples=1000)
    se = math.sqrt(est * (1 - est) / 400)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_recall_interval_uses_only_that_class():
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0, 0, 0])  # COVID recall 1 whatever the other class does
    assert stratified_bootstrap_ci(y, pred, recall_of(0), n_resamples=200) == (1.0, 1.0, 1.0)


def test_mcnemar_exact_small_case():
    y = np.zeros(20, dtype=int)
    a = np.zeros(20, dtype=int)
    b = np.zeros(20, dtype=int)
    b[:10] = 1  # 10 images: A right, B wrong
    a[10:12] = 1  # 2 images: A wrong, B right
    r = mcnemar_test(y, a, b)
    assert (r["b"], r["c"], r["method"]) == (10, 2, "exact")
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)


def test_mcnemar_chi_squared_with_continuity_correction():
    y = np.zeros(60, dtype=int)
    a, b = np.zeros(60, dtype=int), np.zeros(60, dtype=int)
    b[:30] = 1
    a[30:40] = 1
    r = mcnemar_test(y, a, b)
    assert (r["b"], r["c"], r["method"]) == (30, 10, "chi2-cc")
    assert r["statistic"] == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)
    assert r["p_value"] == pytest.approx(0.0026636, rel=1e-3)
    assert mcnemar_test(y, a, a)["p_value"] == 1.0


def test_ece_hand_case():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    # two bins: every confidence (.9, .6, .7, .8) falls in (0.5, 1]; mean .75, all right -> gap .25
    assert expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.25)
    # ten bins: bins of .6, .7, .8, .9 hold one right image each: gaps .4, .3, .2, .1 -> mean .25
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.25)
    wrong = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])  # first image wrong at confidence .9
    assert expected_calibration_error(y, wrong, n_bins=10) == pytest.approx((0.9 + 0.4 + 0.3 + 0.2) / 4)


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    honest = softmax(logits, axis=1)
    overconfident = softmax(4 * logits, axis=1)  # same ranking, far too sure
    t = fit_temperature(y[:1000], overconfident[:1000])
    assert t == pytest.approx(4.0, rel=0.15)
    before = negative_log_likelihood(y[1000:], overconfident[1000:])
    after = negative_log_likelihood(y[1000:], apply_temperature(overconfident[1000:], t))
    assert after < before * 0.7
    assert after == pytest.approx(negative_log_likelihood(y[1000:], honest[1000:]), rel=0.05)
    assert np.array_equal(apply_temperature(overconfident, t).argmax(1), overconfident.argmax(1))
    assert expected_calibration_error(y, apply_temperature(overconfident, t)) < expected_calibration_error(
        y, overconfident
    )


@pytest.fixture(scope="module")
def real_oof():
    """The default recipe's 600 out-of-fold predictions on the sample (shipped logits of real films), calibrated."""
    import json

    from cxr.metrics.stats import fit_temperature_to_logits, softmax_with_temperature
    from cxr.training.held_out import BUNDLED

    bundle = json.loads(BUNDLED.read_text())
    y, z = np.asarray(bundle["labels"]), np.asarray(bundle["logits"], dtype=np.float64)
    return y, z, softmax_with_temperature(z, fit_temperature_to_logits(y, z))


def test_a_calibrated_model_stays_under_its_chance_band(real_oof):
    # labels drawn from the model's own probabilities are calibrated by construction: their ECE falls under the
    # band's 95th percentile about 95% of the time, on 60 films as on 600
    _, _, p = real_oof
    rng = np.random.default_rng(1)
    for n in (60, 600):
        rows = rng.choice(len(p), n, replace=False)
        band = ece_if_calibrated(p[rows], draws=400, seed=2)
        under = []
        for _ in range(200):
            y = np.array([rng.choice(4, p=q / q.sum()) for q in p[rows]])
            under.append(expected_calibration_error(y, p[rows]) <= band["p95"])
        assert 0.88 <= np.mean(under) <= 0.995
        assert 0 < band["median"] < band["p95"]


def test_the_chance_band_shrinks_with_the_films_and_a_sharpened_model_exceeds_it(real_oof):
    y, z, p = real_oof
    rng = np.random.default_rng(3)
    rows = rng.choice(len(p), 60, replace=False)
    small, large = ece_if_calibrated(p[rows]), ece_if_calibrated(p)
    assert large["p95"] < small["median"]  # 600 films pin the ECE down far more than 60
    assert expected_calibration_error(y, p) < large["p95"]  # fitted on them: no evidence of miscalibration
    from cxr.metrics.stats import softmax_with_temperature

    sharp = softmax_with_temperature(z, 0.3)  # the raw logits made more confident still
    assert expected_calibration_error(y, sharp) > ece_if_calibrated(sharp)["p95"]
