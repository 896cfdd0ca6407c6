"""The end-of-training stage on a real model's logits for real films (the pixel baseline kept in tests/fixtures,
scored on the sample): a temperature always, even when the held-out films hold no error, and an operating point
that meets its target on the films it was chosen on."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.labels import CLASS_NAMES, DATABASE
from cxr.metrics.operating_point import operating_rates
from cxr.metrics.stats import softmax_with_temperature
from cxr.models.classifier import CXRClassifier
from cxr.training.finish import finish
from cxr.training.held_out import from_logits

FIXTURE = Path(__file__).parent / "fixtures" / "logreg-model"


@pytest.fixture(scope="module")
def scored(sample_dir):
    """(labels, logits) of 40 films per class."""
    clf = CXRClassifier.from_pretrained(FIXTURE)
    files = [(k, f) for k, c in enumerate(CLASS_NAMES) for f in sorted((sample_dir / c).glob("*.png"))[:40]]
    with torch.inference_mode():
        logits = clf.model(clf.inputs([f for _, f in files])).float().numpy()
    return np.array([k for k, _ in files]), logits.astype(np.float64)


def test_the_temperature_and_the_threshold_come_from_the_held_out_films(scored):
    y, z = scored
    held = from_logits(y[::2], z[::2], "80 held-out films", CLASS_NAMES)
    done = finish(held, (y[1::2], z[1::2]), (y[1::2], z[1::2]), classes=DATABASE, calibrate=True, max_missed_rate=0.05)
    assert done.temperature != 1.0 and "fitted on 80 held-out films" in done.calibration["note"]
    assert done.calibration["fitted_on"] == "80 held-out films"
    after = done.calibration["held_out"]
    assert after["ece_after"] <= after["ece_before"] + 1e-9  # fitted there: no worse there
    assert after["films"] == 80 and done.calibration["test"]["films"] == 80
    chance = after["ece_if_calibrated"]  # what a calibrated model would show on 80 films by chance
    assert 0 < chance["median"] < chance["p95"] < 0.2
    rates = operating_rates(
        held.labels,
        softmax_with_temperature(held.logits, done.temperature),
        done.operating_point.normal_threshold,
        DATABASE,
    )
    assert rates["missed_rate"] <= 0.05 and done.operating_point.rates == rates
    g = done.operating_point.guarantee  # the expected share guaranteed on the 40 held-out critical films
    assert g.kind == "expected" and g.critical_films == 40 and g.bound == (rates["critical_called_normal"] + 1) / 41
    assert done.operating_point.chosen_on == "80 held-out films" and done.operating_point.max_missed_rate == 0.05


def test_held_out_films_without_an_error_still_give_a_temperature(scored):
    y, z = scored
    right = z.argmax(1) == y
    held = from_logits(y[right], z[right], "the films it got right", CLASS_NAMES)
    done = finish(held, (y, z), (y, z), classes=DATABASE, calibrate=True, max_missed_rate=0.01)
    assert 0.05 < done.temperature < 20 and done.temperature != 1.0
    assert "rule of succession" in done.calibration["note"]
    # smoothing keeps the model from certainty: the mean confidence stays below 1 - 1/(n+2) (roughly)
    conf = softmax_with_temperature(held.logits, done.temperature).max(1).mean()
    assert conf < 1 - 0.5 / (len(held) + 2)


def test_without_calibration_the_operating_point_is_chosen_on_the_raw_probabilities(scored):
    y, z = scored
    done = finish(
        from_logits(y, z, "160 films", CLASS_NAMES),
        (y, z),
        (y, z),
        classes=DATABASE,
        calibrate=False,
        max_missed_rate=0.02,
    )
    assert done.temperature == 1.0 and done.calibration is None
    assert (
        operating_rates(y, softmax_with_temperature(z, 1.0), done.operating_point.normal_threshold, DATABASE)[
            "missed_rate"
        ]
        <= 0.02
    )
