"""The distributed path on CPU: two processes (DDP through Accelerate), every test image counted once."""

import csv
import json

import pytest
from helpers import PYTHON, TWO_PROCESS_ENV, TWO_PROCESSES, launch_errors, run_script


@pytest.mark.slow
def test_two_process_run_counts_every_test_image_exactly_once(tmp_path, sample_dir):
    out = tmp_path / "ddp"
    proc = run_script(
        [
            *TWO_PROCESSES,
            "train_accelerate.py",
            "--model",
            "logreg",
            "--data",
            str(sample_dir),
            "--output-dir",
            str(out),
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--batch-size",
            "32",
            "--num-workers",
            "0",
        ],
        env=TWO_PROCESS_ENV,
    )
    assert proc.returncode == 0, launch_errors(proc)
    run_cfg = json.loads((out / "run_config.json").read_text())
    assert run_cfg["num_processes"] == 2 and run_cfg["micro_batch_per_process"] == 16
    split = json.loads((out / "split.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    # 60 test images over 2 processes x 16 per batch do not divide evenly: padding must not be counted
    for part in ("train", "validation", "test"):
        assert metrics[part]["num_images"] == len(split[part])
        assert sum(c["support"] for c in metrics[part]["per_class"].values()) == len(split[part])
    names = [r["file_name"] for r in csv.DictReader(open(out / "predictions.csv"))]
    assert sorted(names) == sorted(split["test"])  # each exactly once

    # a single-process evaluation of the kept model over the same images agrees image for image
    data = tmp_path / "test-images"
    for name in split["test"]:
        cls, base = name.split("/")
        (data / cls).mkdir(parents=True, exist_ok=True)
        (data / cls / base).symlink_to(sample_dir / cls / base)
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
    single = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert single["confusion_matrix"] == metrics["test"]["confusion_matrix"]
