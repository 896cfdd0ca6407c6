"""``python -m cxr.predict`` on real films of the sample, with the pixel-baseline model folder kept in
tests/fixtures (saved without an operating point: it decides by argmax) and a copy of it given one."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile import write_dicom
from PIL import Image

from cxr.commands.predict import main as predict_main
from cxr.data.decode import read_radiograph
from cxr.labels import CLASS_NAMES, DATABASE
from cxr.metrics.operating_point import argmax_rule, decide
from cxr.models.classifier import CXRClassifier

FIXTURE = Path(__file__).parent / "fixtures" / "logreg-model"


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probs(row) -> np.ndarray:
    return np.array([float(row[f"p_{c}"]) for c in CLASS_NAMES])


@pytest.fixture
def mixed(tmp_path, sample_dir) -> Path:
    """A folder as a hospital exports it: PNGs in sub-folders, a DICOM without suffix, a JPEG, a text file named
    .png, and a file of another type."""
    root = tmp_path / "films"
    (root / "ward-a").mkdir(parents=True)
    for cls in ("COVID", "Normal"):
        for film in sorted((sample_dir / cls).glob("*.png"))[:2]:
            shutil.copy(film, root / "ward-a" / film.name)
    grey = Image.open(sorted((sample_dir / "Viral Pneumonia").glob("*.png"))[0]).convert("L")
    write_dicom(root / "IM0001", np.asarray(grey, dtype=np.float64) * 16)
    grey.save(root / "film.jpg", quality=95)
    write_dicom(root / "no-pixels.dcm", np.asarray(grey, dtype=np.float64), with_pixels=False)
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = np.linspace(0, 255, 256)[None, :], np.linspace(255, 0, 256)[:, None]
    Image.fromarray(rgb).save(root / "photo.png")  # a colour photograph: classified, with a warning
    (root / "notes.png").write_text("not an image")
    (root / "README.txt").write_text("exported films")
    return root


@pytest.fixture
def with_operating_point(tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(FIXTURE, model)
    config = json.loads((model / "config.json").read_text())
    config.setdefault("cxr", {})["operating_point"] = {"normal_threshold": 0.5, "max_missed_rate": 0.01}
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_a_mixed_folder_gives_one_row_per_file_and_model_with_the_classifiers_probabilities(
    mixed, with_operating_point, tmp_path
):
    out = tmp_path / "predictions.csv"
    assert (
        predict_main([str(mixed), "--model", str(FIXTURE), "--model", str(with_operating_point), "--output", str(out)])
        == 0
    )
    rows = _rows(out)
    expected_files = sorted(str(f) for f in mixed.rglob("*") if f.is_file() and f.name != "README.txt")
    assert sorted({r["file"] for r in rows}) == expected_files and len(expected_files) == 9
    assert len(rows) == 9 * 2  # one per file and model
    bad = [r for r in rows if Path(r["file"]).name == "notes.png"]
    assert len(bad) == 2 and all("not an image" in r["error"] and r["p_Normal"] == "" for r in bad)
    empty = [r for r in rows if Path(r["file"]).name == "no-pixels.dcm"]
    assert len(empty) == 2 and all("pixel" in r["error"] and r["prediction"] == "" for r in empty), empty
    photo = [r for r in rows if Path(r["file"]).name == "photo.png"]
    assert all(r["error"] == "" and "colour" in r["warnings"].lower() for r in photo), photo
    for ref in (FIXTURE, with_operating_point):
        clf = CXRClassifier.from_pretrained(ref)
        for r in (r for r in rows if r["model"] == str(ref) and not r["error"]):
            expected = clf.predict_proba([read_radiograph(r["file"])[0]])[0]
            assert np.abs(_probs(r) - expected).max() < 2e-6, r["file"]
            assert r["prediction"] == CLASS_NAMES[int(expected.argmax())]
            assert r["out_of_distribution"] in ("true", "false", "")
    argmax = [r for r in rows if r["model"] == str(FIXTURE) and not r["error"]]
    assert all(r["decision"] == r["prediction"] for r in argmax)  # no operating point: argmax


def test_the_saved_threshold_reproduces_the_decision_column_and_a_film_just_under_it_is_not_normal(
    sample_dir, with_operating_point, tmp_path
):
    films = sorted((sample_dir / "Normal").glob("*.png"))[:12]
    out = tmp_path / "p.csv"
    assert predict_main([*map(str, films), "--model", str(with_operating_point), "--output", str(out)]) == 0
    rows = _rows(out)
    probs = np.array([_probs(r) for r in rows])
    assert [r["decision"] for r in rows] == [CLASS_NAMES[i] for i in decide(probs, 0.5, DATABASE)]
    # the threshold set just above one film's P(Normal): that film is no longer called Normal, the rule says so
    film = int(np.argmax(probs[:, CLASS_NAMES.index("Normal")]))
    config = json.loads((with_operating_point / "config.json").read_text())
    config["cxr"]["operating_point"]["normal_threshold"] = float(probs[film, 2]) + 1e-6
    (with_operating_point / "config.json").write_text(json.dumps(config))
    assert predict_main([str(films[film]), "--model", str(with_operating_point), "--output", str(out)]) == 0
    (row,) = _rows(out)
    assert row["prediction"] == "Normal" and row["decision"] != "Normal"
    clf = CXRClassifier.from_pretrained(with_operating_point)
    assert clf.decision_rule.startswith("Normal only when P(Normal) ≥ ")
    assert CXRClassifier.from_pretrained(FIXTURE).decision_rule == argmax_rule(DATABASE)


def test_grad_cam_images_per_file_and_model_and_a_glob(sample_dir, tmp_path):
    out, cams = tmp_path / "p.csv", tmp_path / "cams"
    pattern = str(sample_dir / "COVID" / "COVID-100*.png")
    assert predict_main([pattern, "--model", str(FIXTURE), "--output", str(out), "--cam-dir", str(cams)]) == 0
    rows = _rows(out)
    written = sorted(cams.rglob("*.png"))
    assert rows and len(written) == len(rows)
    assert all(Image.open(p).size == Image.open(r["file"]).size for p, r in zip(written, rows))
    # each is the decided class's map of the film as decoded for its row (one decode, the same input)
    from cxr.models.cam import class_activation_map, overlay_heatmap

    clf = CXRClassifier.from_pretrained(FIXTURE)
    first = next(p for p in written if p.name.endswith(Path(rows[0]["file"]).name + ".png"))
    image, _ = read_radiograph(rows[0]["file"])
    expected = overlay_heatmap(image, class_activation_map(clf, image, CLASS_NAMES.index(rows[0]["decision"])))
    assert np.abs(np.asarray(Image.open(first)).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing path", "input not found"),
        ("empty folder", "no PNG, JPEG or DICOM file"),
        ("nothing readable", "no file could be classified"),
        ("output is a folder", "is a folder; name the CSV file"),
        ("output not writable", "is not a folder"),
        ("bad batch size", "--batch-size must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_model_loads(case, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("text")
    inputs = {"missing path": "nowhere/film.png", "empty folder": str(tmp_path / "empty")}.get(
        case, str(tmp_path / "junk")
    )
    under_a_file = tmp_path / "junk" / "a.png" / "p.csv"
    output = {"output is a folder": tmp_path, "output not writable": under_a_file}.get(case, tmp_path / "p.csv")
    model = str(FIXTURE) if case == "nothing readable" else "cxr-test/not-published"  # never loaded otherwise
    extra = ["--batch-size", "0"] if case == "bad batch size" else []
    assert predict_main([inputs, "--model", model, "--output", str(output), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "not-published" not in err, err


def test_cxr_eval_writes_the_decision_beside_argmax_and_the_errors_as_pictures(subset, with_operating_point, tmp_path):
    """cxr.eval of a model with an operating point: the decision column follows from the saved threshold and the
    probabilities as written, metrics.json's decision block counts those decisions, the report says the rule and
    embeds the misclassified films, which errors.png shows."""
    from cxr.commands.eval import main as eval_main
    from cxr.metrics import compute_metrics
    from cxr.run_folder import RunFolder, read_json

    out = tmp_path / "eval"
    assert eval_main(["--model", str(with_operating_point), "--data", str(subset), "--output-dir", str(out)]) == 0
    run = RunFolder(out)
    rows = _rows(run.predictions("test"))
    probs = np.array([_probs(r) for r in rows])
    labels = np.array([CLASS_NAMES.index(r["label"]) for r in rows])
    decided = decide(probs, 0.5, DATABASE)
    assert [r["decision"] for r in rows] == [CLASS_NAMES[i] for i in decided]
    assert [r["prediction"] for r in rows] == [CLASS_NAMES[i] for i in probs.argmax(1)]
    block = read_json(run.metrics)["decision"]
    assert block["normal_threshold"] == 0.5 and block["rule"] == "Normal only when P(Normal) ≥ 0.500"
    assert (
        block["confusion_matrix"] == compute_metrics(labels, probs, DATABASE, predictions=decided)["confusion_matrix"]
    )
    report = run.report.read_text()
    assert "Decision rule: **Normal only when P(Normal) ≥ 0.500**" in report and "![errors.png](errors.png)" in report
    wrong = int((decided != labels).sum())
    assert wrong > 0 and run.errors_plot.is_file() and run.operating_point_plot.is_file()
    # the figure names the films it shows: misclassified ones, COVID / Viral Pneumonia called Normal first
    shown = read_json(run.metrics)["errors_shown"]
    misclassified = {r["file_name"] for r, d, y in zip(rows, decided, labels) if d != y}
    assert shown and set(shown) <= misclassified and len(shown) == min(wrong, 16)
    assert all(f"`{name}`" in report for name in shown)
    critical = {r["file_name"] for r, d in zip(rows, decided) if r["label"] in ("COVID", "Viral Pneumonia") and d == 2}
    if len(critical) <= 16:
        assert set(shown[: len(critical)]) == critical
    assert run.errors_plot not in run.published and run.operating_point_plot in run.published
