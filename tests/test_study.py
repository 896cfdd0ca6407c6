"""`python -m cxr.study` on a small subset of the real sample: every section, resumable, recomputable."""

import csv
import dataclasses
import json
import shutil

import pytest
from helpers import TWO_PROCESS_ENV, TWO_PROCESSES, launch_errors, make_subset, run_script
from sklearn.metrics import accuracy_score

from cxr.errors import CXRError

# Every test here starts processes or trains models: in the full suite (--runslow), not the fast default run.
pytestmark = pytest.mark.slow

SECTIONS = [
    "## Table 1",
    "## Tables 2–",
    "## Uncertainty",
    "## Calibration",
    "## ImageNet weights versus training from scratch",
    "## CLAHE",
    "## Grad-CAM (the paper's Table 6)",
    "## Source audit",
]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, sample_dir):
    root = make_subset(tmp_path_factory.mktemp("study-data") / "data", sample_dir, 12)
    shutil.copy(sample_dir / "metadata.csv", root / "metadata.csv")  # a temporary copy, for the source audit
    return root


@pytest.fixture(scope="module")
def interrupted_then_resumed(small_data, tmp_path_factory):
    from cxr.reproduction import runner
    from cxr.reproduction.runner import run_study

    out = tmp_path_factory.mktemp("study") / "study"
    real_train = runner.train  # the study's runner trains each arm with cxr.training.loop.train
    real_preset = runner.STUDY_PRESETS["cpu-quick"]
    # the preset shrunk further for the test (its five runs at 96 px and 6 epochs take minutes on a small CPU)
    runner.STUDY_PRESETS["cpu-quick"] = dataclasses.replace(real_preset, image_size=48, epochs=2)
    calls = []

    def study():
        arms = ["logreg", "tf_efficientnet_lite0"]
        return run_study(
            str(small_data), out, arms, "cpu-quick", clahe=True, num_workers=0, bootstrap=200, cam_images_per_class=1
        )

    def train_then_die(cfg):
        calls.append(cfg.output_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during the second run")
        return real_train(cfg)

    runner.train = train_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            study()
        runner.train = real_train
        assert (out / "logreg" / "metrics.json").is_file() and not (out / "study.md").exists()
        result = study()
    finally:
        runner.train = real_train
        runner.STUDY_PRESETS["cpu-quick"] = real_preset
    return out, result


def test_study_resumes_and_skips_finished_runs(interrupted_then_resumed):
    _, result = interrupted_then_resumed
    log = result["runs_log"]
    assert log["logreg"]["status"] == "skipped (finished)"
    assert all(
        log[name]["status"] == "trained"
        for name in (
            "logreg-clahe",
            "tf_efficientnet_lite0",
            "tf_efficientnet_lite0-scratch",
            "tf_efficientnet_lite0-clahe",
        )
    )


def test_study_writes_every_section_and_figure(interrupted_then_resumed):
    out, result = interrupted_then_resumed
    text = (out / "study.md").read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "Research use only" in text
    assert "| ResNet50 (paper) | 2,116 test images | 98.59% | 95.46% | 3 | 6 | 54 |" in text
    assert "> **Warning:** Lung_Opacity is drawn from one source only (darwin757/ThoraxScanAI)" in text
    for figure in ("reliability.png", "gradcam_grid.png"):
        assert (out / figure).stat().st_size > 10_000
    assert json.loads((out / "study.json").read_text())["best"] == result["best"]
    runs = {json.loads((out / name / "run_config.json").read_text())["config"]["split_file"] for name in result["runs"]}
    assert runs == {str(out / "split.json")}  # one split for every run


def test_every_number_comes_from_the_saved_predictions(interrupted_then_resumed):
    out, result = interrupted_then_resumed
    for name, numbers in result["runs"].items():
        rows = list(csv.DictReader(open(out / name / "predictions.csv")))
        y = [r["label"] for r in rows]
        pred = [r["prediction"] for r in rows]
        assert numbers["test"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert numbers["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
        assert numbers["train_accuracy"] == pytest.approx(metrics["train"]["accuracy"])
        est, lo, hi = numbers["ci95"]["accuracy"]
        assert lo <= est <= hi
        cal = numbers["calibration"]
        assert cal["nll_validation_after"] <= cal["nll_validation_before"] + 1e-9
        row = f"| {name} (ours) | {len(rows)} test images | {100 * numbers['train_accuracy']:.2f}% | {100 * numbers['test']['accuracy']:.2f}% |"
        assert row in (out / "study.md").read_text()


def test_paper_preset_offline_fails_before_training_anything(small_data, tmp_path):
    from cxr.reproduction.runner import run_study

    with pytest.raises(CXRError, match="--no-pretrained"):
        run_study(str(small_data), tmp_path / "paper", ["logreg", "resnet50"], "paper", num_workers=0)
    assert not (tmp_path / "paper" / "logreg").exists()


@pytest.mark.slow
def test_study_runs_under_a_two_process_launch(small_data, tmp_path):
    """`accelerate launch -m cxr.study`: every run uses both processes, one report is written."""
    out = tmp_path / "ddp"
    proc = run_script(
        [
            *TWO_PROCESSES,
            "-m",
            "cxr.study",
            "--data",
            str(small_data),
            "--output-dir",
            str(out),
            "--models",
            "logreg",
            "--clahe",
            "--num-workers",
            "0",
            "--bootstrap",
            "200",
            "--cam-images",
            "1",
        ],
        env=TWO_PROCESS_ENV,
    )
    assert proc.returncode == 0, launch_errors(proc)
    assert proc.stdout.count("wrote ") == 1
    for run in ("logreg", "logreg-clahe"):
        assert json.loads((out / run / "run_config.json").read_text())["num_processes"] == 2
    assert "## CLAHE" in (out / "study.md").read_text()
