"""Options that change where a run's images and logs come from: --split-file and --report-to."""

import json

from helpers import tiny_run

from cxr.commands.train import main as train_main


def _run(sample_dir, out, *extra):
    return train_main(
        [
            *tiny_run("logreg", 24, 1),
            "--data",
            str(sample_dir),
            "--output-dir",
            str(out),
            *extra,
        ]
    )


def test_split_file_makes_runs_share_their_test_images(tmp_path, sample_dir):
    assert _run(sample_dir, tmp_path / "a", "--seed", "1") == 0
    assert _run(sample_dir, tmp_path / "b", "--seed", "7") == 0
    assert _run(sample_dir, tmp_path / "c", "--seed", "7", "--split-file", str(tmp_path / "a" / "split.json")) == 0
    a, b, c = (json.loads((tmp_path / x / "split.json").read_text()) for x in "abc")
    assert a["test"] != b["test"]  # another seed, another split
    assert c["test"] == a["test"] and c["validation"] == a["validation"]
    test_c = json.loads((tmp_path / "c" / "metrics.json").read_text())["test"]
    assert test_c["num_images"] == len(a["test"])


def test_report_to_tensorboard_writes_event_files(tmp_path, sample_dir):
    assert _run(sample_dir, tmp_path / "tb", "--report-to", "tensorboard") == 0
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
