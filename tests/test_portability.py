"""The same answer in every library: a cxr model folder given to timm's own eval transform and to
transformers' ``pipeline`` gets cxr's input, so all three give cxr's probabilities — on a non-square
image, an RGB image and a 16-bit PNG made from real X-rays. Where they cannot (CLAHE), the config
says so and transformers refuses to load the model with the reason."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cxr  # noqa: F401  (registers alexnet and logreg in timm)
from cxr import CXRClassifier
from cxr.data.preprocessing import PreprocessConfig, load_grayscale
from cxr.labels import CLASS_NAMES
from cxr.models import create_model
from cxr.models.checkpoint import NON_PORTABLE_MODEL_TYPE, save_model_dir

TOLERANCE = 1e-3  # probabilities within 1e-3 of cxr's, or the model card says where and why not


def save_model(tmp_path, name, image_size=64, clahe=False, pretrained=False):
    model, source = create_model(name, 4, pretrained=pretrained, image_size=image_size)
    torch.manual_seed(0)
    with torch.no_grad():  # a head that separates the classes, as after training
        for p in model.get_classifier().parameters():
            p.normal_(0, 0.2)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(image_size, cfg["input_size"][0], "model", cfg["mean"], cfg["std"], clahe=clahe)
    return save_model_dir(
        model, tmp_path / f"{name}{'-clahe' if clahe else ''}", prep, {"model": name, "pretrained": source}
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_dir):
    """Three real X-rays in the forms other libraries mishandle: non-square, RGB, 16-bit."""
    root = tmp_path_factory.mktemp("images")
    lung = Image.open(sorted((sample_dir / "Lung_Opacity").glob("*.png"))[0])  # 299x299, mode L
    lung.crop((0, 20, 299, 250)).save(root / "non_square.png")  # 299 x 230
    covid = sorted((sample_dir / "COVID").glob("*.png"))[0]  # 256x256 RGB with R=G=B
    Image.open(covid).save(root / "rgb.png")
    grey = np.asarray(Image.open(sorted((sample_dir / "Normal").glob("*.png"))[0]).convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 40 + 1500).save(root / "sixteen_bit.png")  # a detector's range, not 0..65535
    assert Image.open(root / "rgb.png").mode == "RGB"
    assert Image.open(root / "sixteen_bit.png").mode.startswith("I")
    assert Image.open(root / "non_square.png").size == (299, 230)
    return {p.stem: p for p in root.glob("*.png")}


def _timm_probs(folder, image):
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        return model(transform(image).unsqueeze(0)).softmax(-1)[0].numpy()


def _pipeline_probs(pipe, image):
    return np.array([{r["label"]: r["score"] for r in pipe(image)}[c] for c in CLASS_NAMES])


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "logreg", "alexnet"])
def test_timm_and_transformers_preprocess_like_cxr(tmp_path, images, name):
    from transformers import pipeline

    folder = save_model(tmp_path, name, pretrained=name == "tf_efficientnet_lite0")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["pretrained_cfg"]["crop_mode"] == "squash" and cfg["pretrained_cfg"]["crop_pct"] == 1.0
    assert cfg["cxr"]["portability"]["timm"] and cfg["cxr"]["portability"]["transformers"]
    assert "model_type" not in cfg
    clf = CXRClassifier.from_pretrained(folder)
    pipe = pipeline("image-classification", model=str(folder), top_k=4)
    for kind, path in images.items():
        ours = clf.predict_proba([path])[0]
        assert ours.max() - ours.min() > 0.05, "the head must separate the classes for the check to mean anything"
        # 8-bit files go to other libraries as they are; a 16-bit one through cxr's reader (the card says so)
        as_rgb = load_grayscale(path).convert("RGB") if kind == "sixteen_bit" else Image.open(path).convert("RGB")
        np.testing.assert_allclose(_timm_probs(folder, as_rgb), ours, atol=TOLERANCE, err_msg=f"timm, {kind}")
        np.testing.assert_allclose(_pipeline_probs(pipe, as_rgb), ours, atol=TOLERANCE, err_msg=f"pipeline, {kind}")
        if kind != "sixteen_bit":  # the pipeline reads the file itself
            np.testing.assert_allclose(
                _pipeline_probs(pipe, str(path)), ours, atol=TOLERANCE, err_msg=f"pipeline from the path, {kind}"
            )


def test_sixteen_bit_path_through_the_pipeline_differs_as_the_card_says(tmp_path, images):
    """transformers reads a 16-bit path with PIL's clipping conversion: the card documents it, this shows why."""
    from transformers import pipeline

    folder = save_model(tmp_path, "tf_efficientnet_lite0", pretrained=True)
    pipe = pipeline("image-classification", model=str(folder), top_k=4)
    path = images["sixteen_bit"]
    ours = CXRClassifier.from_pretrained(folder).predict_proba([path])[0]
    assert np.abs(_pipeline_probs(pipe, str(path)) - ours).max() > 10 * TOLERANCE
    notes = " ".join(json.loads((folder / "config.json").read_text())["cxr"]["portability"]["notes"])
    assert "load_grayscale(path)" in notes and "16-" in notes


def test_clahe_model_says_it_is_cxr_only_and_transformers_refuses_it_clearly(tmp_path, images):
    from transformers import AutoModelForImageClassification, pipeline

    folder = save_model(tmp_path, "tf_efficientnet_lite0", clahe=True)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["cxr"]["portability"]["transformers"] is False and cfg["cxr"]["portability"]["timm"] is False
    assert "CLAHE" in cfg["cxr"]["portability"]["notes"][0]
    assert cfg["model_type"] == NON_PORTABLE_MODEL_TYPE
    for load in (
        lambda: AutoModelForImageClassification.from_pretrained(str(folder)),
        lambda: pipeline("image-classification", model=str(folder)),
    ):
        with pytest.raises(ValueError, match=r"CLAHE preprocessing that transformers cannot apply; load with cxr"):
            load()
    # cxr and timm still load it (timm's user applies CLAHE; the card shows how)
    clf = CXRClassifier.from_pretrained(folder)
    assert clf.preprocess.clahe
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = clf.inputs([images["rgb"]])
    with torch.no_grad():
        np.testing.assert_allclose(model(x).softmax(-1).numpy(), clf.predict_proba([images["rgb"]]), atol=1e-5)


def test_saved_temperature_changes_probabilities_but_not_classes(tmp_path, images):
    folder = save_model(tmp_path, "logreg")
    paths = list(images.values())
    before = CXRClassifier.from_pretrained(folder).predict_proba(paths)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["cxr"]["temperature"] = 2.5
    (folder / "config.json").write_text(json.dumps(cfg))
    clf = CXRClassifier.from_pretrained(folder)
    after = clf.predict_proba(paths)
    assert clf.temperature == 2.5
    assert (after.argmax(1) == before.argmax(1)).all()
    assert np.abs(after - before).max() > 0.01 and after.max() < before.max()
    logits = np.log(before)
    expected = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    np.testing.assert_allclose(after, expected, atol=1e-5)
