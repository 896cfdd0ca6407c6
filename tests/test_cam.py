"""Grad-CAM: target layers per architecture, token reshapes, the same preprocessing as training."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cxr  # noqa: F401
from cxr.data.preprocessing import PreprocessConfig
from cxr.models.cam import CAM_METHODS, class_activation_map, overlay_heatmap, reshape_transform_for, target_layers
from cxr.models.classifier import CXRClassifier


def _classifier(arch, size=64, **kw):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=4, **kw)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(
        size, cfg["input_size"][0], "imagenet" if cfg["input_size"][0] == 3 else "radiography"
    )
    return CXRClassifier(model, prep, {"architecture": arch, "cxr": {"model": arch}}, arch)


def test_study_layers_are_the_registry_ones():
    alex = timm.create_model("alexnet", num_classes=4)
    assert target_layers(alex, "alexnet") == [alex.features[12]]
    res = timm.create_model("resnet50", num_classes=4)
    assert target_layers(res, "resnet50") == [res.layer4[2]]
    vgg = timm.create_model("vgg19_bn", num_classes=4)
    assert target_layers(vgg, "vgg19_bn") == [vgg.features[51]]
    r18 = timm.create_model("resnet18", num_classes=4)
    assert target_layers(r18, "resnet18") == [r18.layer4]  # timm's last feature stage


@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_method_gives_a_normalised_map_at_input_size(sample_dir, method):
    clf = _classifier("resnet18")
    cam = class_activation_map(clf, next((sample_dir / "COVID").glob("*.png")), class_index=2, method=method)
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0 + 1e-6


def test_vit_tokens_are_reshaped_to_a_grid(sample_dir):
    clf = _classifier("vit_tiny_patch16_224", size=64, img_size=64)
    assert reshape_transform_for(clf.model)(torch.zeros(1, 1 + 16, 192)).shape == (1, 192, 4, 4)
    cam = class_activation_map(clf, next((sample_dir / "Normal").glob("*.png")), method="GradCAM")
    assert cam.shape == (64, 64) and cam.max() > 0


def test_logreg_shows_its_linear_contribution(sample_dir):
    clf = _classifier("logreg", size=24, img_size=24)
    path = next((sample_dir / "Normal").glob("*.png"))
    cam = class_activation_map(clf, path, class_index=1)
    x = clf.inputs([path])[0, 0]
    expected = (clf.model.head.weight[1].reshape(24, 24) * x).clamp(min=0).detach().numpy()
    assert np.allclose(cam, expected / expected.max(), atol=1e-5)


def test_cam_input_is_the_training_input(sample_dir, monkeypatch):
    """The tensor Grad-CAM explains is the checkpoint's preprocessing of the file, nothing else."""
    clf = _classifier("resnet18")
    path = next((sample_dir / "Lung_Opacity").glob("*.png"))
    seen = []
    original = clf.model.forward
    monkeypatch.setattr(clf.model, "forward", lambda x: seen.append(x.detach().clone()) or original(x))
    class_activation_map(clf, path)
    assert torch.equal(seen[0][0], clf.preprocess.transform(path))


def test_overlay_has_the_shown_image_size():
    shown = Image.new("L", (300, 200), 128)
    out = overlay_heatmap(shown, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    assert out.shape == (200, 300, 3) and out.dtype == np.uint8


def test_quickstart_reuses_finished_runs(tmp_path, sample_dir, monkeypatch):
    import json

    import cxr.training.loop
    from cxr.app.quickstart import QUICKSTART_RUNS, ensure_quickstart_models
    from cxr.run_folder import FORMAT_VERSION

    for spec in QUICKSTART_RUNS:
        run = tmp_path / spec.name
        (run / "model").mkdir(parents=True)
        (run / "run_config.json").write_text(json.dumps({"format_version": FORMAT_VERSION}))
        (run / "metrics.json").write_text("{}")
        (run / "model" / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(cxr.training.loop, "train", lambda cfg: pytest.fail(f"trained {cfg.output_dir} again"))
    folders = ensure_quickstart_models(sample_dir, tmp_path)  # no training: both finished
    assert folders == [str(tmp_path / name / "model") for name in ("quickstart-lite0", "quickstart-logreg")]


def test_one_forward_per_model_per_request(tmp_path, sample_dir):
    """The app's probabilities and heat map come from the same forward pass of each model."""
    from cxr.app.board import ModelBoard
    from cxr.models.checkpoint import save_model_dir

    refs = []
    for arch in ("resnet18", "logreg"):
        clf = _classifier(arch, size=64, **({"img_size": 64} if arch == "logreg" else {}))
        refs.append(str(save_model_dir(clf.model, tmp_path / arch, clf.preprocess, {"model": arch})))
    board = ModelBoard.load(refs)
    calls = {m.ref: 0 for m in board.models}
    for m in board.models:
        m.classifier.model.register_forward_hook(lambda *_, ref=m.ref: calls.__setitem__(ref, calls[ref] + 1))
    path = next((sample_dir / "COVID").glob("*.png"))
    updates = [(dict(a.probabilities), dict(a.heatmaps)) for a in board.analyse(str(path))]
    assert calls == {refs[0]: 1, refs[1]: 1}
    assert updates[0][1] == {} and len(updates[0][0]) == 2  # probabilities first, no heat map yet
    assert len(updates[-1][1]) == 2
    for m in board.models:  # the shared forward gives the plain prediction's probabilities
        expected = m.classifier.predict(path)
        assert updates[-1][0][m.ref] == pytest.approx(expected, abs=1e-6)


def test_a_session_holds_its_model_until_it_ends(sample_dir, monkeypatch):
    """A prediction on the same classifier from another thread waits for an open Grad-CAM session (its hooks
    would record that forward too) and runs once the session ends; a session whose hooks cannot be set up
    leaves the model free."""
    import threading

    from cxr.models import cam as cam_module
    from cxr.models.cam import CamSession

    clf = _classifier("resnet18")
    path = next((sample_dir / "Normal").glob("*.png"))
    done = threading.Event()
    worker = threading.Thread(target=lambda: (clf.predict(path), done.set()))
    with CamSession(clf, "GradCAM") as session:
        session.probabilities(path)
        worker.start()
        assert not done.wait(0.5)  # still waiting while the session's hooks are on the model
        session.heatmap()
    assert done.wait(60)
    worker.join()

    monkeypatch.setattr(cam_module, "target_layers", lambda *a: (_ for _ in ()).throw(RuntimeError("no layers")))
    with pytest.raises(RuntimeError, match="no layers"):
        CamSession(clf, "GradCAM")
    assert not clf.lock.locked()
