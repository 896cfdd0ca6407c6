"""The run folder has one owner: RunFolder names every file, and no other module spells one."""

import re
from pathlib import Path

import numpy as np
import pytest

from cxr.labels import CLASS_NAMES
from cxr.run_folder import RunFolder, read_predictions, write_json, write_predictions

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = (
    "metrics.json",
    "run_config.json",
    "split.json",
    "history.json",
    "checkpoint.pt",
    "report.md",
    "predictions.csv",
    "predictions_train.csv",
    "predictions_validation.csv",
    "confusion_matrix.png",
    "training_curves.png",
)


def test_no_module_but_run_folder_spells_a_run_file_name():
    spelled = {}
    for path in (REPO / "cxr").rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        code = path.read_text()
        found = [n for n in RUN_FILES if re.search(rf"[\"']{re.escape(n)}[\"']", code)]
        found += ['"model" subfolder'] * bool(re.search(r"/ \"model\"", code))
        if found:
            spelled[str(path.relative_to(REPO))] = found
    assert spelled == {}


def test_states_follow_the_files_written(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert not run.holds_run() and not run.is_finished() and run.read_config() is None
    run.root.mkdir()
    write_json(run.run_config, {"config": {"model": "logreg", "epochs": 2}})
    assert run.read_config() == {"model": "logreg", "epochs": 2}
    run.checkpoint.write_bytes(b"")
    assert run.holds_run() and not run.is_finished()
    run.model_dir.mkdir()
    run.model_weights.write_bytes(b"")
    assert not run.is_finished()  # the model is saved before the end; metrics.json is written last
    write_json(run.metrics, {"test": {}})
    assert run.is_finished()
    assert run.holdout.root == run.root / "holdout" and run.holdout != run
    assert [p.name for p in run.published] == [
        "metrics.json",
        "confusion_matrix.png",
        "training_curves.png",
        "operating_point.png",
        "split.json",
    ]
    assert run.errors_plot not in run.published  # the dataset's films: never pushed


def test_predictions_round_trip_with_the_argmax_as_prediction(tmp_path):
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8], [0.2, 0.5, 0.2, 0.1]])
    path = RunFolder(tmp_path).predictions("validation")
    write_predictions(
        path, ["COVID/a.png", "Normal/b.png", "Lung_Opacity/c.png"], np.array([0, 2, 1]), probs, class_names=CLASS_NAMES
    )
    header, *rows = path.read_text().splitlines()
    assert header.split(",") == ["file_name", "label", "prediction", "decision", *[f"p_{c}" for c in CLASS_NAMES]]
    assert [r.split(",")[2] for r in rows] == ["COVID", "Viral Pneumonia", "Lung_Opacity"]
    assert [r.split(",")[3] for r in rows] == ["COVID", "Viral Pneumonia", "Lung_Opacity"]  # no rule: argmax
    back = read_predictions(path)
    assert back.files == ["COVID/a.png", "Normal/b.png", "Lung_Opacity/c.png"]
    assert back.y.tolist() == [0, 2, 1] and back.pred.tolist() == [0, 3, 1]
    np.testing.assert_allclose(back.probs, probs, atol=1e-6)
    # a decision rule is applied to the probabilities as written: the file reproduces it
    write_predictions(
        path, ["a", "b", "c"], np.array([0, 2, 1]), probs, class_names=CLASS_NAMES, decide=lambda p: np.full(len(p), 2)
    )
    assert [r.split(",")[3] for r in path.read_text().splitlines()[1:]] == ["Normal"] * 3


def test_a_full_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    import errno
    import os

    from cxr.errors import CXRError
    from cxr.run_folder import check_writable

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CXRError, match="cannot write in .*No space left on device"):
        check_writable(tmp_path / "run")
    monkeypatch.setattr(os, "fsync", real_fsync)
    check_writable(tmp_path / "run")  # a disk with room passes
