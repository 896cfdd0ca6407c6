"""Your films, your classes: a two-class model (Normal vs COVID, from folders with names of their own, mapped with
--label-map) and a three-class one (names of its own, its own negative and critical classes) trained on real films,
then evaluated, predicted, recalibrated for a site and loaded by timm and transformers with the same probabilities;
and every bad input refused in one sentence with nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cxr  # noqa: F401  (registers logreg in timm)
from cxr import CXRClassifier
from cxr.commands.calibrate import main as calibrate_main
from cxr.commands.eval import main as eval_main
from cxr.commands.predict import main as predict_main
from cxr.commands.train import main as train_main

TWO_MAP = ["--label-map", "normal films=Normal", "--label-map", "covid films=COVID"]


def _folder(root: Path, sample_dir: Path, classes: dict, per_class: int, start: int = 0) -> Path:
    """``{folder name: sample class}``: ``per_class`` real films of each, linked (never copied)."""
    for name, ours in classes.items():
        (root / name).mkdir(parents=True)
        for f in sorted((sample_dir / ours).glob("*.png"))[start : start + per_class]:
            (root / name / f.name).symlink_to(f)
    return root


def _train(data: Path, out: Path, *extra: str) -> int:
    return train_main(
        ["--model", "logreg", "--data", str(data), "--output-dir", str(out), "--image-size", "64", "--epochs", "2",
         "--cache-dir", str(out.parent / "cache"), *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def two(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("two")
    data = _folder(root / "data", sample_dir, {"normal films": "Normal", "covid films": "COVID"}, 40)
    assert _train(data, root / "run", *TWO_MAP) == 0
    return root


@pytest.fixture(scope="module")
def three(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("three")
    data = _folder(root / "data", sample_dir, {"Clear": "Normal", "Covid": "COVID", "Opacity": "Lung_Opacity"}, 30)
    code = _train(data, root / "run", "--negative-class", "Clear", "--critical-classes", "Covid")
    assert code == 0
    return root


@pytest.mark.slow
def test_two_classes_trained_from_renamed_folders(two):
    model = two / "run" / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["label_names"] == ["COVID", "Normal"] and cfg["num_classes"] == 2
    assert cfg["cxr"]["screening"] == {"negative_class": "Normal", "critical_classes": ["COVID"]}
    metrics = json.loads((two / "run" / "metrics.json").read_text())
    assert metrics["classes"]["names"] == ["COVID", "Normal"]
    assert set(metrics["test"]["per_class"]) == {"COVID", "Normal"}
    report = (two / "run" / "report.md").read_text()
    assert "Viral Pneumonia" not in report and "Lung_Opacity" not in report
    header = (two / "run" / "predictions.csv").read_text().splitlines()[0]
    assert header.endswith("p_COVID,p_Normal")
    op = metrics["decision"]
    assert op["negative_class"] == "Normal" and op["critical_classes"] == ["COVID"]


@pytest.mark.slow
def test_two_classes_evaluated_with_the_same_label_map(two, tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main(["--model", str(two / "run" / "model"), "--data", str(two / "data"), "--output-dir", str(out),
                      *TWO_MAP]) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["num_images"] == 80 and m["classes"]["names"] == ["COVID", "Normal"]
    # without the map, the folder names are not the model's classes: refused in one sentence, nothing written
    bad = tmp_path / "bad"
    assert (
        eval_main(["--model", str(two / "run" / "model"), "--data", str(two / "data"), "--output-dir", str(bad)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown class folder(s): 'covid films', 'normal films'" in err[-1] and "--label-map" in err[-1]
    assert not bad.exists()


@pytest.mark.slow
def test_two_and_four_class_models_predicted_side_by_side(two, tmp_path):
    films = sorted((two / "data" / "covid films").iterdir())[:2]
    out = tmp_path / "p.csv"
    fixture = Path(__file__).parent / "fixtures" / "logreg-model"
    code = predict_main(["--model", str(two / "run" / "model"), "--model", str(fixture), "--output", str(out),
                         *map(str, films)])  # fmt: skip
    assert code == 0
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    assert {"p_COVID", "p_Normal", "p_Lung_Opacity", "p_Viral Pneumonia"} <= set(header)
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    two_rows = [r for r in rows if "two" in r.get("model", "") or r.get("p_Lung_Opacity") == ""]
    assert two_rows and all(r["p_Lung_Opacity"] == "" and r["p_COVID"] for r in two_rows)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["two", "three"])
def test_timm_and_transformers_give_cxrs_probabilities(request, which, sample_dir):
    from transformers import pipeline

    folder = request.getfixturevalue(which) / "run" / "model"
    clf = CXRClassifier.from_pretrained(folder)
    film = sorted((sample_dir / "COVID").glob("*.png"))[-1]
    ours = clf.predict_proba([film])[0]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        by_timm = (model(transform(Image.open(film).convert("RGB")).unsqueeze(0)) / clf.temperature).softmax(-1)[0]
    np.testing.assert_allclose(by_timm.numpy(), ours, atol=1e-3)
    pipe = pipeline("image-classification", model=str(folder), top_k=len(clf.label_names))
    scores = {r["label"]: r["score"] for r in pipe(Image.open(film).convert("RGB"))}
    assert set(scores) == set(clf.label_names)
    raw = np.array([scores[c] for c in clf.label_names])
    np.testing.assert_allclose(raw, by_timm.numpy() if clf.temperature == 1 else raw, atol=1e-3)
    with torch.no_grad():
        uncalibrated = model(transform(Image.open(film).convert("RGB")).unsqueeze(0)).softmax(-1)[0].numpy()
    np.testing.assert_allclose(raw, uncalibrated, atol=1e-3)


@pytest.mark.slow
def test_three_classes_with_their_own_screening_question(three):
    clf = CXRClassifier.from_pretrained(three / "run" / "model")
    assert clf.label_names == ["Clear", "Covid", "Opacity"]
    assert (clf.classes.negative, clf.classes.critical) == ("Clear", ("Covid",))
    metrics = json.loads((three / "run" / "metrics.json").read_text())
    rule = metrics["decision"]["rule"]
    assert rule.startswith("Clear only when P(Clear)") or "argmax" in rule or "most probable" in rule
    assert "Covid" in (three / "run" / "report.md").read_text()


@pytest.mark.slow
def test_recalibrated_for_a_site_and_loaded_by_every_consumer(two, tmp_path, sample_dir, capsys):
    site = _folder(tmp_path / "site", sample_dir, {"Normal": "Normal", "COVID": "COVID"}, 40, start=100)
    out = tmp_path / "site-model"
    assert calibrate_main(["--model", str(two / "run" / "model"), "--data", str(site), "--output-dir", str(out),
                           "--max-missed-rate", "0.05"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "Guaranteed" in said or "cannot be guaranteed" in said
    record = json.loads((out / "site_calibration.json").read_text())
    assert record["films"] == 80 and record["critical_films"] > 0 and record["guarantee_re_established"]
    assert record["temperature_refitted"]  # two classes, 80 films
    g = record["operating_point"]["guarantee"]
    assert g["critical_films"] == record["critical_films"] and g["bound"] >= g["attainable"]
    clf = CXRClassifier.from_pretrained(out / "model")
    assert clf.site["site"] == str(site) and clf.site["films"] == 80
    assert clf.operating_point.normal_threshold == record["operating_point"]["normal_threshold"]
    # the weights are the original model's
    original = (two / "run" / "model" / "model.safetensors").read_bytes()
    assert (out / "model" / "model.safetensors").read_bytes() == original
    # cxr.eval loads it; timm loads it
    assert eval_main(["--model", str(out / "model"), "--data", str(site), "--output-dir", str(tmp_path / "e")]) == 0
    timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    from cxr.reporting.model_card import render_model_card

    card = str(render_model_card(out, "org/site-model"))
    assert "## Recalibrated for a site" in card and f"{site}: 80 films" in card
    assert "**The weights are the original" in card and record["guarantee_sentence"] in card
    # cxr.predict decides by the new point; the app's column names the site
    films = sorted((site / "COVID").iterdir())[:3]
    assert predict_main(["--model", str(out / "model"), "--output", str(tmp_path / "p.csv"), *map(str, films)]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 4 and ",p_COVID,p_Normal," in rows[0]
    from cxr.app.board import site_line

    assert site_line(clf) == f"Operating point set for {site} (80 films): {record['guarantee_sentence']}"


@pytest.mark.slow
def test_a_recalibrated_folder_is_pushed_and_downloaded_like_any_run(two, tmp_path, sample_dir, hub):
    from helpers import PYTHON, hub_env, run_script

    site = _folder(tmp_path / "site", sample_dir, {"Normal": "Normal", "COVID": "COVID"}, 20, start=100)
    out = tmp_path / "site-model"
    assert calibrate_main(["--model", str(two / "run" / "model"), "--data", str(site), "--output-dir", str(out)]) == 0
    env = hub_env(hub, tmp_path)
    proc = run_script([PYTHON, "-m", "cxr.hub", "push", str(out), "cxr-test/two-site"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(hub.repos["cxr-test/two-site"].snapshot("main")[1])
    assert {"README.md", "config.json", "model.safetensors", "metrics.json"} <= set(files)
    code = (
        "from cxr import CXRClassifier; c = CXRClassifier.from_pretrained('cxr-test/two-site'); "
        "print(c.label_names, c.site['films'], c.operating_point.normal_threshold)"
    )
    proc = run_script([PYTHON, "-c", code], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "site_calibration.json").read_text())
    assert proc.stdout.split()[-1] == str(record["operating_point"]["normal_threshold"])
    assert "['COVID', 'Normal'] 40" in proc.stdout


@pytest.mark.slow
def test_a_site_without_critical_films_keeps_the_point(two, tmp_path, external_dev_dir):
    out = tmp_path / "ext"
    assert calibrate_main(["--model", str(two / "run" / "model"), "--data", str(external_dev_dir),
                           "--output-dir", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "site_calibration.json").read_text())
    assert not record["guarantee_re_established"] and not record["temperature_refitted"]
    assert record["operating_point"] == record["original_operating_point"]
    assert record["negative_films"] == record["films"] == 130 and 0 <= record["negative_kept_rate"] <= 1
    assert "not re-established" in (out / "site_calibration.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "folders, extra, message",
    [
        ({"Normal": "Normal"}, [], "at least two classes"),
        ({"Normal": "Normal", "COVID": "COVID", "Empty": None}, [], "class folder(s) with no images: Empty"),
        (
            {"Normal": "Normal", "COVID": "COVID", "Notes": "txt"},
            ["--skip-bad-images"],
            "class(es) with no images: Notes",
        ),
        ({"Normal": "Normal", "COVID": "COVID"}, ["--negative-class", "Healthy"], "--negative-class 'Healthy'"),
        ({"Normal": "Normal", "COVID": "COVID"}, ["--critical-classes", "Normal"], "includes the negative class"),
        ({"Normal": "Normal", "COVID": "COVID"}, ["--max-missed-rate", "0"], "--max-missed-rate"),
        ({"Normal": "Normal", "COVID": "COVID"}, ["--max-missed-rate", "1"], "--max-missed-rate"),
        ({"Normal": "Normal", "COVID": "COVID"}, ["--label-map", "Normal"], "NAME=CLASS"),
    ],
)
def test_bad_training_inputs(tmp_path, sample_dir, capsys, folders, extra, message):
    data = tmp_path / "data"
    for name, ours in folders.items():
        (data / name).mkdir(parents=True)
        if ours is None:
            continue
        if ours == "txt":
            (data / name / "notes.png").write_text("not a film")
            continue
        for f in sorted((sample_dir / ours).glob("*.png"))[:5]:
            (data / name / f.name).symlink_to(f)
    out = tmp_path / "run"
    assert _train(data, out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_bad_calibration_inputs(two, tmp_path, sample_dir, capsys):
    model = str(two / "run" / "model")
    unknown = _folder(tmp_path / "u", sample_dir, {"Normal": "Normal", "Tuberculosis": "Viral Pneumonia"}, 3)
    none_of_ours = _folder(tmp_path / "n", sample_dir, {"Pneumonia": "Viral Pneumonia"}, 3)
    ok = _folder(tmp_path / "ok", sample_dir, {"Normal": "Normal", "COVID": "COVID"}, 3)
    for data, extra, message in [
        (unknown, [], "unknown class folder(s): 'Tuberculosis'"),
        (none_of_ours, [], "unknown class folder(s): 'Pneumonia'"),
        (ok, ["--max-missed-rate", "1"], "--max-missed-rate"),
        (ok, ["--label-map", "Pneumonia=Viral Pneumonia"], "not a class of the model"),
    ]:
        out = tmp_path / "out"
        assert calibrate_main(["--model", model, "--data", str(data), "--output-dir", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err
        assert not out.exists()


@pytest.mark.slow
def test_a_declared_class_without_films_is_refused(tmp_path, sample_dir, capsys):
    import datasets

    files = sorted((sample_dir / "Normal").glob("*.png"))[:6] + sorted((sample_dir / "COVID").glob("*.png"))[:6]
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": f.name} for f in files], "label": [0] * 6 + [1] * 6},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["Normal", "COVID", "Cardiomegaly"])}
        ),
    )
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    assert _train(tmp_path / "pq", tmp_path / "run") == 2
    assert "class(es) with no films in --data: Cardiomegaly" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
