"""The out-of-distribution guard: real chest X-rays pass, grey images that are not chest X-rays are flagged,
and every place that predicts (CXRClassifier, the app, cxr.eval, training's report) says so."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.models.ood import OOD_FILE, OODGuard, OutOfDistributionWarning, capture_features, probe_images


def test_capture_features_summarises_every_feature_stage_of_the_same_forward():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad(), capture_features(model) as captured:
        model(x)
        together = captured.take()
        model(x[:1])
        alone = captured.take()
    stages = [f["num_chs"] for f in model.feature_info]
    assert together.shape == (3, 2 * sum(stages))  # a mean and a spread per channel of each stage
    blocks = torch.split(together, [2 * c for c in stages], dim=1)
    assert all(torch.allclose(b.norm(dim=1), torch.ones(3)) for b in blocks)  # each stage weighs the same
    assert torch.allclose(alone[0], together[0], atol=1e-5)  # an image's features do not depend on its batch
    # the last stage's means are the classifier's input, up to its scale
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    last_means = blocks[-1][:, : stages[-1]]
    assert torch.allclose(
        last_means / last_means.norm(dim=1, keepdim=True), pooled / pooled.norm(dim=1, keepdim=True), atol=1e-4
    )
    assert not any(m._forward_hooks for m in model.modules())  # every hook is gone


def test_a_model_without_stages_is_summarised_by_its_classifier_input():
    import timm

    import cxr.models  # noqa: F401 (registers logreg)

    model = timm.create_model("logreg", num_classes=4, img_size=24).eval()
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad(), capture_features(model) as captured:
        model(x)
    got = captured.take()
    assert torch.allclose(got, x.flatten(1) / x.flatten(1).norm(dim=1, keepdim=True), atol=1e-6)


def test_guard_threshold_comes_from_validation_and_survives_a_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    near = lambda n: centre + 0.3 * rng.normal(size=(n, 64))  # noqa: E731
    guard = OODGuard.fit(near(400), near(100), flag_rate=0.02)
    assert guard.flags(near(100)).mean() < 0.1  # new images like the training ones pass
    assert guard.flags(rng.normal(size=(50, 64))).all()  # unrelated directions are flagged
    guard.save(tmp_path)
    again = OODGuard.load(tmp_path)
    probe = near(20)
    assert again.k == guard.k and again.threshold == guard.threshold
    assert np.allclose(again.scores(probe), guard.scores(probe), atol=2e-3)  # float16 reference
    assert OODGuard.load(tmp_path / "nothing-here") is None  # a model saved before the guard


def test_probe_images_are_grey_and_offline():
    probes = probe_images(64)
    assert len(probes) >= 20
    assert all(im.mode == "L" and im.size == (64, 64) for im in probes.values())
    assert any("grace_hopper" in name for name in probes) and any("noise" in name for name in probes)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, sample_dir):
    """EfficientNet-Lite0 with its ImageNet weights at 64 px, its guard fitted on real sample X-rays."""
    from cxr.data.preprocessing import PreprocessConfig
    from cxr.models import create_model
    from cxr.models.checkpoint import save_model_dir
    from cxr.models.classifier import CXRClassifier

    model, _ = create_model("tf_efficientnet_lite0", 4, pretrained=True, image_size=64)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(64, 3, "model", cfg["mean"], cfg["std"])
    files = {c: sorted((sample_dir / c).glob("*.png")) for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")}
    train = [f for fs in files.values() for f in fs[:40]]
    val = [f for fs in files.values() for f in fs[40:50]]
    held_out = [f for fs in files.values() for f in fs[100:110]]
    folder = save_model_dir(
        model, tmp_path_factory.mktemp("guarded") / "model", prep, {"model": "tf_efficientnet_lite0"}
    )

    def features(paths):
        with torch.no_grad(), capture_features(model.eval()) as captured:
            model(torch.stack([prep.transform(p) for p in paths]))
        return captured.take()

    OODGuard.fit(features(train), features(val)).save(folder)
    return CXRClassifier.from_pretrained(folder), held_out


def test_classifier_flags_grey_non_radiographs_and_passes_real_xrays(guarded):
    clf, held_out = guarded
    assert (Path(clf.source) / OOD_FILE).is_file()
    _, flags = clf.predict_and_check(held_out)
    assert flags.mean() <= 0.05, flags  # real X-rays the guard never saw
    probes = probe_images(256)
    _, probe_flags = clf.predict_and_check(list(probes.values()))
    assert probe_flags.mean() >= 0.95, [n for n, f in zip(probes, probe_flags) if not f]
    with pytest.warns(OutOfDistributionWarning, match="does not look like the chest X-rays"):
        clf.predict(probes["photo: grace_hopper"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        clf.predict(held_out[0])  # no warning for a real X-ray


def test_a_model_without_a_guard_predicts_as_before(sample_dir, tmp_path):
    from cxr.models.classifier import CXRClassifier

    clf = CXRClassifier.from_pretrained("tests/fixtures/logreg-model")
    assert clf.ood is None
    probs, flags = clf.predict_and_check([next((sample_dir / "COVID").glob("*.png"))])
    assert flags is None and probs.shape == (1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        clf.predict(Image.new("L", (64, 64)))


def test_the_validation_scores_are_saved_with_the_guard_and_set_a_whole_set_shift(guarded, sample_dir, tmp_path):
    """A whole set's distances against the validation films': unseen films of the sample's sources are not
    called shifted; the same films through another acquisition chain (inverted, blurred, re-compressed) are."""
    from PIL import ImageFilter, ImageOps

    from cxr.metrics.shift import shift_summary

    clf, held_out = guarded
    assert clf.ood.validation_scores is not None and len(clf.ood.validation_scores) == 40
    # the threshold is the validation scores' 98th percentile ("higher"), so it is one of them
    assert np.isclose(clf.ood.validation_scores, clf.ood.threshold, atol=1e-6).any()

    def scores(images):
        with torch.no_grad(), capture_features(clf.model) as captured:
            clf.model(clf.inputs(images))
        return clf.ood.scores(captured.take())

    same = shift_summary(scores(held_out), clf.ood.validation_scores)
    assert not same["shifted"] and same["beyond_validation_p95"]["share"] <= 0.25
    changed = [ImageOps.invert(Image.open(f).convert("L")).filter(ImageFilter.GaussianBlur(3)) for f in held_out]
    other = shift_summary(scores(changed), clf.ood.validation_scores)
    assert other["shifted"] and other["direction"] == "farther" and other["ks"]["p_value"] < 0.01

    # cxr.eval reports it in metrics.json and in its report
    import json

    from cxr.commands.eval import main as eval_main

    data = tmp_path / "data" / "Normal"
    data.mkdir(parents=True)
    for i, im in enumerate(changed[:12]):
        im.save(data / f"changed-{i}.png")
    assert eval_main(["--model", clf.source, "--data", str(data.parent), "--output-dir", str(tmp_path / "ev")]) == 0
    shift = json.loads((tmp_path / "ev" / "metrics.json").read_text())["shift"]
    assert shift["films"] == 12 and shift["validation_films"] == 40 and shift["shifted"]
    assert "not like the ones this model was validated on" in (tmp_path / "ev" / "report.md").read_text()
