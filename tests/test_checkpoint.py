"""Model folders in timm's Hub layout, loaded by cxr, timm and transformers alike; atomic checkpoints."""

import json
import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cxr  # noqa: F401
from cxr.data.preprocessing import PreprocessConfig
from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES
from cxr.models import create_model
from cxr.models.checkpoint import (
    capture_rng_state,
    load_model,
    load_training_state,
    restore_rng_state,
    save_model_dir,
    save_training_state,
)


def _save(tmp_path, name, image_size=64, norm="radiography", pretrained=False):
    model, source = create_model(name, 4, pretrained=pretrained, image_size=image_size)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial head, as after training
        for p in model.get_classifier().parameters():
            p.normal_(0, 0.05)
    prep = PreprocessConfig.create(
        image_size,
        model.pretrained_cfg["input_size"][0],
        norm,
        model.pretrained_cfg["mean"],
        model.pretrained_cfg["std"],
    )
    out = save_model_dir(model, tmp_path / name, prep, {"model": name, "pretrained": source})
    return model.eval(), prep, out


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "alexnet", "logreg"])
def test_same_probabilities_from_cxr_timm_and_transformers(tmp_path, sample_dir, name):
    from transformers import AutoModelForImageClassification

    model, prep, out = _save(tmp_path, name, pretrained=name == "tf_efficientnet_lite0")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["label_names"] == list(CLASS_NAMES)
    assert "num_classes" not in cfg.get("model_args", {})
    assert cfg["cxr"]["preprocessing"]["mean"] == list(prep.mean)

    x = torch.stack([prep.transform(p) for p in sorted((sample_dir / "COVID").glob("*.png"))[:2]])
    ours, prep2, _ = load_model(out)
    assert prep2 == prep
    by_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_hf = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    assert by_hf.config.id2label == dict(enumerate(CLASS_NAMES))
    with torch.no_grad():
        ref = model(x).softmax(-1)
        for other in (ours(x), by_timm(x), by_hf(pixel_values=x).logits):
            assert torch.allclose(other.softmax(-1), ref, atol=1e-6)
    data_cfg = timm.data.resolve_data_config({}, model=by_timm)
    assert tuple(data_cfg["mean"]) == prep.mean and tuple(data_cfg["input_size"][1:]) == (64, 64)


def test_transformers_pipeline_reads_the_saved_preprocessing(tmp_path, sample_dir):
    from transformers import pipeline

    model, prep, out = _save(tmp_path, "tf_efficientnet_lite0", pretrained=True)
    path = sorted((sample_dir / "Viral Pneumonia").glob("*.png"))[0]
    pipe = pipeline("image-classification", model=str(out), top_k=4)
    got = {r["label"]: r["score"] for r in pipe(Image.open(path).convert("RGB"))}
    with torch.no_grad():
        ref = model(prep.transform(path).unsqueeze(0)).softmax(-1)[0]
    assert set(got) == set(CLASS_NAMES)
    for i, name in enumerate(CLASS_NAMES):  # squash resize with the same PIL filter: cxr's input
        assert got[name] == pytest.approx(float(ref[i]), abs=1e-3)


def test_bad_checkpoints_get_clear_errors(tmp_path):
    _, _, out = _save(tmp_path, "logreg")
    with pytest.raises(CXRError, match="no config.json"):
        load_model(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    other = dict(cfg, label_names=["cat", "dog", "bird", "fish"])
    (out / "config.json").write_text(json.dumps(other))
    with pytest.raises(CXRError, match="is damaged: its label_names"):
        load_model(out)
    no_cxr = {k: v for k, v in cfg.items() if k != "cxr"}
    (out / "config.json").write_text(json.dumps(no_cxr))
    with pytest.raises(CXRError, match="not a cxr checkpoint"):
        load_model(out)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(CXRError, match="no model.safetensors"):
        load_model(out)
    with pytest.raises(CXRError, match="not found"):
        load_model(tmp_path / "nowhere" / "model")


def test_model_folder_is_replaced_atomically(tmp_path, monkeypatch):
    _, prep, out = _save(tmp_path, "logreg")
    before = (out / "model.safetensors").read_bytes()
    model, _ = create_model("logreg", 4, pretrained=False, image_size=64)

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(model, out, prep, {"model": "logreg"})
    assert (out / "model.safetensors").read_bytes() == before
    load_model(out)


def test_training_checkpoint_survives_a_kill_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_training_state(path, {"epoch": 1, "w": torch.ones(3)})
    real_save = torch.save

    def partial_then_die(obj, f, *a, **k):
        f.write(b"\x80\x02partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", partial_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_training_state(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    state = load_training_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    save_training_state(tmp_path / "c.pt", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_training_state(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_classifier_predicts_by_name_from_path_pil_or_array(tmp_path, sample_dir):
    from cxr import CXRClassifier

    _, _, out = _save(tmp_path, "tf_efficientnet_lite0", pretrained=True)
    clf = CXRClassifier.from_pretrained(out)
    path = sorted((sample_dir / "Normal").glob("*.png"))[0]
    by_path = clf.predict(path)
    assert list(by_path) == list(CLASS_NAMES) and sum(by_path.values()) == pytest.approx(1.0, abs=1e-5)
    with Image.open(path) as im:
        by_pil = clf.predict(im)
        by_array = clf.predict(np.asarray(im))
    for name in CLASS_NAMES:
        assert by_pil[name] == pytest.approx(by_path[name], abs=1e-6)
        assert by_array[name] == pytest.approx(by_path[name], abs=1e-6)
    assert clf.name == "tf_efficientnet_lite0" and "64px" in repr(clf)


def test_the_kept_model_folder_loads_and_predicts_the_probabilities_it_was_saved_with(sample_dir):
    """tests/fixtures/logreg-model: a model folder of this run format, with the probabilities it gave four sample
    X-rays when it was saved (a change to loading or preprocessing that moves them fails here)."""
    import json
    from pathlib import Path

    import timm

    from cxr import CXRClassifier

    folder = Path(__file__).parent / "fixtures" / "logreg-model"
    expected = json.loads((folder / "expected_probabilities.json").read_text())
    clf = CXRClassifier.from_pretrained(folder)
    for name, probs in expected.items():
        got = clf.predict(str(sample_dir / name))
        assert set(got) == set(probs)
        assert all(abs(got[c] - probs[c]) < 1e-5 for c in probs), (name, got, probs)
    assert timm.create_model(f"local-dir:{folder}").num_classes == 4  # still timm's layout


@pytest.mark.parametrize("version", [None, 0, 2])
def test_a_model_folder_of_another_format_is_refused_in_one_sentence(tmp_path, version):
    """A model folder written by another cxr (no format recorded, an older or a newer one) is never read through a
    fallback: loading it says what it is and what to do, in one sentence."""
    import json
    import shutil
    from pathlib import Path

    from cxr import CXRClassifier
    from cxr.errors import CXRError

    folder = tmp_path / "model"
    shutil.copytree(Path(__file__).parent / "fixtures" / "logreg-model", folder)
    cfg = json.loads((folder / "config.json").read_text())
    if version is None:
        del cfg["cxr"]["format_version"]
    else:
        cfg["cxr"]["format_version"] = version
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CXRError) as e:
        CXRClassifier.from_pretrained(folder)
    message = str(e.value)
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert str(folder) in message and "train it again" in message
    assert ("earlier" if version in (None, 0) else "newer") in message


def test_a_training_checkpoint_of_another_format_is_refused(tmp_path):
    import torch

    from cxr.errors import CXRError
    from cxr.models.checkpoint import load_training_state, save_training_state

    path = tmp_path / "checkpoint.pt"
    save_training_state(path, {"epoch": 1})
    assert load_training_state(path)["format_version"] == 1
    torch.save({"epoch": 1}, path)  # what an earlier cxr wrote: no format
    with pytest.raises(CXRError, match="earlier cxr, before run formats were versioned"):
        load_training_state(path)
