"""`python -m cxr.cv`: stratified folds, one model per fold, every image scored exactly once out of fold,
resumable, under accelerate launch too — on real X-rays at small sizes."""

import csv
import json
import os

import numpy as np
import pytest
from helpers import CLASSES, PYTHON, TWO_PROCESS_ENV, TWO_PROCESSES, launch_errors, make_subset, run_script, tiny_run

from cxr.commands.cv import main as cv_main
from cxr.data.data_source import load_data_source
from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES
from cxr.run_folder import RunFolder
from cxr.training.cv import check_folds, fold_split, stratified_folds
from cxr.training.held_out import bundle_from_cv, bundled_for

TINY = tiny_run("logreg", 24, 1, "--batch-size", "16")


def _names_labels(per_class=10):
    names = [f"{c}/{c}-{i}.png" for c in CLASSES for i in range(per_class)]
    return names, [CLASSES.index(n.split("/")[0]) for n in names]


def test_folds_are_stratified_disjoint_complete_and_deterministic():
    names, labels = _names_labels(10)
    folds = stratified_folds(names, labels, k=3, seed=1)
    assert folds == stratified_folds(list(reversed(names)), list(reversed(labels)), k=3, seed=1)  # order-free
    assert folds != stratified_folds(names, labels, k=3, seed=2)
    assert sorted(n for f in folds for n in f) == sorted(names)  # every image in exactly one fold
    for c in CLASSES:
        sizes = [sum(n.startswith(c + "/") for n in f) for f in folds]
        assert max(sizes) - min(sizes) <= 1, (c, sizes)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    lab = dict(zip(names, labels))
    for k in range(3):
        split = fold_split(folds, k, lab, seed=1)
        assert split["test"] == folds[k]
        assert not set(split["train"]) & set(split["validation"]) and not set(split["train"]) & set(split["test"])
        assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(names)
        assert {n.split("/")[0] for n in split["validation"]} == set(CLASSES)


def test_fold_count_is_checked():
    _, labels = _names_labels(4)
    for k, message in ((1, "at least 2"), (5, "more than the smallest class"), (2, "fewer than 3 images outside")):
        with pytest.raises(CXRError, match=message):
            check_folds(k, labels, CLASS_NAMES)
    check_folds(3, _names_labels(6)[1], CLASS_NAMES)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--folds", "11"], "--folds 11 is more than the smallest class has images"),
        (["--split-file", "x.json"], "--split-file"),
        (["--resume"], "--resume does not apply"),
        (["--bootstrap", "5"], "--bootstrap must be at least 100"),
    ],
)
def test_bad_cv_flags_fail_before_any_work(tmp_path, subset, capsys, args, message):
    """In process, through the command's ``main`` (the entry point itself is run below)."""
    if "--split-file" in args:
        (tmp_path / "x.json").write_text("{}")
        args = ["--split-file", str(tmp_path / "x.json")]
    assert cv_main(["--data", str(subset), "--output-dir", str(tmp_path / "cv"), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert not (tmp_path / "cv" / "fold-0").exists()


def _oof(cv):
    with open(cv / "oof_predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cv_scores_every_image_once_and_resumes_without_retraining(tmp_path, sample_dir):
    data = make_subset(tmp_path / "data", sample_dir, 6)
    cv = tmp_path / "cv"
    cmd = [
        PYTHON,
        "-m",
        "cxr.cv",
        "--data",
        str(data),
        "--output-dir",
        str(cv),
        "--folds",
        "3",
        "--bootstrap",
        "200",
        *TINY,
    ]
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _oof(cv)
    names = sorted(f"{c}/{p.name}" for c in CLASSES for p in (data / c).iterdir())
    assert sorted(r["file_name"] for r in rows) == names  # one out-of-fold prediction per image
    folds = json.loads((cv / "folds.json").read_text())
    assert folds["fold_files"] == stratified_folds(names, [CLASSES.index(n.split("/")[0]) for n in names], 3, 1)
    for r in rows:  # each image was predicted by the fold that held it out, which never trained on it
        k = int(r["fold"])
        assert r["file_name"] in folds["fold_files"][k]
        split = json.loads((cv / f"fold-{k}" / "split.json").read_text())
        assert r["file_name"] in split["test"] and r["file_name"] not in split["train"] + split["validation"]
        assert abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4
    result = json.loads((cv / "cv.json").read_text())
    acc = result["out_of_fold"]["accuracy"]
    correct = sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    assert acc["value"] == pytest.approx(correct) and acc["low"] <= acc["value"] <= acc["high"]
    assert [f["images"] for f in result["per_fold"]] == [len(f) for f in folds["fold_files"]]
    report = (cv / "cv.md").read_text()
    assert "COVID recall" in report and "95% interval" in report and "not for diagnosis" in report
    chance = result["out_of_fold"]["ece"]["if_calibrated"]
    assert f"an ECE of {chance['median']:.3f} on these {len(rows)} films by chance alone" in report
    # each fold's operating point, and its misclassified films embedded (the files exist)
    assert all(f["normal_threshold"] is not None for f in result["per_fold"])
    figures = [f["errors_figure"] for f in result["per_fold"] if f["errors_figure"]]
    assert figures and all((cv / fig).is_file() and f"]({fig})" in report for fig in figures)

    # the bundle cxr ships for --choose-on auto is made from such a folder: the same films, classes and answers
    bundle = bundle_from_cv(cv, "a test bundle")
    assert bundle["files"] == [r["file_name"] for r in rows] and bundle["folds"] == 3
    assert bundle["labels"] == [CLASSES.index(r["label"]) for r in rows]
    assert [CLASSES[int(np.argmax(z))] for z in bundle["logits"]] == [r["prediction"] for r in rows]
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    assert bundle["content"] == folds["content"] and set(bundle["content"]) == set(names)
    recipe, films = result["recipe"], load_data_source(str(data), None, None).dataset
    assert bundled_for(recipe, films, tmp_path / "bundle.json")[0] is not None
    assert bundled_for({**recipe, "seed": 7}, films, tmp_path / "bundle.json")[0] is not None  # seed: same recipe
    assert bundled_for({**recipe, "clahe": not recipe["clahe"]}, films, tmp_path / "bundle.json")[0] is None
    assert bundled_for(recipe, films.select(range(len(films) - 1)), tmp_path / "bundle.json")[0] is None

    # a kill after two folds: the third is gone; a rerun keeps the finished ones and trains only it
    stamps = {k: (cv / f"fold-{k}" / "model" / "model.safetensors").stat().st_mtime_ns for k in (0, 1)}
    before = (cv / "oof_predictions.csv").read_text()
    for path in sorted((cv / "fold-2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (cv / "fold-2").rmdir()
    (cv / "oof_predictions.csv").unlink()
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("kept (finished before)") == 2 and "[cv fold 3/3] trained" in proc.stdout
    assert {k: (cv / f"fold-{k}" / "model" / "model.safetensors").stat().st_mtime_ns for k in (0, 1)} == stamps
    assert (cv / "oof_predictions.csv").read_text() == before  # same seeds, same fold: the same answers

    # other folds into the same folder: refused
    proc = run_script([*cmd[: -len(TINY)], *TINY, "--folds", "2"])
    assert proc.returncode == 2 and "holds a cross-validation with other folds" in proc.stderr
    # another recipe into the same folder: refused, naming what differs, before any fold is kept or trained
    proc = run_script([*cmd, "--lr", "0.01"])
    assert proc.returncode == 2 and "was trained with another recipe" in proc.stderr and "--lr" in proc.stderr
    assert (cv / "oof_predictions.csv").read_text() == before


@pytest.mark.slow
def test_cv_under_a_two_process_launch(tmp_path, sample_dir):
    data = make_subset(tmp_path / "data", sample_dir, 6)
    cv = tmp_path / "cv"
    proc = run_script(
        [
            *TWO_PROCESSES,
            "-m",
            "cxr.cv",
            "--data",
            str(data),
            "--output-dir",
            str(cv),
            "--folds",
            "2",
            "--bootstrap",
            "100",
            *TINY,
        ],
        env=TWO_PROCESS_ENV,
    )
    assert proc.returncode == 0, launch_errors(proc)
    rows = _oof(cv)
    assert len(rows) == 24 and len({r["file_name"] for r in rows}) == 24
    assert "2 process(es)" in (cv / "fold-0" / "report.md").read_text()
    assert os.path.isfile(cv / "cv.md")


def test_a_training_run_folder_is_refused_as_a_cv_folder(tmp_path, subset):
    """``--output-dir`` naming a training run's folder is refused before any fold trains (a CV folder is not a
    run folder; each fold's run replaces only its own)."""
    tiny_run_dir = tmp_path / "run"
    tiny_run_dir.mkdir()
    (tiny_run_dir / RunFolder(tiny_run_dir).metrics.name).write_text("{}")  # what a finished run writes last
    before = sorted(p.name for p in tiny_run_dir.iterdir())
    proc = run_script([PYTHON, "-m", "cxr.cv", "--data", str(subset), "--output-dir", str(tiny_run_dir), *TINY])
    assert proc.returncode == 2 and "already holds a run" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in tiny_run_dir.iterdir()) == before
