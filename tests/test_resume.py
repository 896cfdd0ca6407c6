"""A run killed mid-training resumes from its last checkpoint and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import PYTHON, REPO, run_script, tiny_run
from safetensors.torch import load_file

EPOCHS = 30


def _args(sample_dir, out, workers="0", extra=()):
    return [
        PYTHON,
        "train_accelerate.py",
        "--model",
        "logreg",
        "--data",
        str(sample_dir),
        "--output-dir",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--image-size",
        "24",
        "--batch-size",
        "32",
        "--num-workers",
        workers,
        *extra,
    ]


_UNINTERRUPTED = {}  # (loader workers, flags) -> the run folder of an uninterrupted run (one per module)
ON_DEVICE = ("--augment", "radiograph", "--augment-on", "device")


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers, delay, extra, refusal",
    [("0", 0.3, (), True), ("2", 0.3, (), False), ("2", 2.0, (), False), ("2", 0.3, ON_DEVICE, False)],
)
def test_killed_run_resumes_to_the_same_result(tmp_path_factory, sample_dir, workers, delay, extra, refusal):
    """kill -9 at two points (a few epochs in, and well into training), with and without loader workers; the
    augmentation (flips, the default recipe; or every --augment radiograph draw made on the device from its
    generator) must repeat exactly after the resume."""
    if (workers, extra) not in _UNINTERRUPTED:
        _UNINTERRUPTED[workers, extra] = tmp_path_factory.mktemp(f"uninterrupted-{workers}")
        proc = run_script(
            _args(sample_dir, _UNINTERRUPTED[workers, extra], workers, extra) + ["--overwrite-output-dir"]
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    full = _UNINTERRUPTED[workers, extra]
    tmp_path = tmp_path_factory.mktemp("killed")

    killed = tmp_path / "killed"
    p = subprocess.Popen(
        _args(sample_dir, killed, workers, extra),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)  # some more epochs, likely mid-save of one of them
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"

    if refusal:  # the same command again, without --resume (in one case only: a process each)
        proc = run_script(_args(sample_dir, killed, workers, extra))
        assert proc.returncode == 2 and "--resume" in proc.stderr

    proc = run_script(_args(sample_dir, killed, workers, extra) + ["--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming logreg" in proc.stdout
    resumed_from = int(proc.stdout.split("after epoch ")[1].split("/")[0])
    assert 1 <= resumed_from < EPOCHS

    h_full = json.loads((full / "history.json").read_text())
    h_resumed = json.loads((killed / "history.json").read_text())
    assert [h["epoch"] for h in h_resumed["epochs"]] == list(range(1, EPOCHS + 1))
    for a, b in zip(h_full["epochs"], h_resumed["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_accuracy"] == b["val_accuracy"]
    w_full, w_resumed = (
        load_file(str(full / "model" / "model.safetensors")),
        load_file(str(killed / "model" / "model.safetensors")),
    )
    assert all((w_full[k] - w_resumed[k]).abs().max() < 1e-5 for k in w_full)
    m_full = json.loads((full / "metrics.json").read_text())
    m_resumed = json.loads((killed / "metrics.json").read_text())
    assert m_full["test"]["confusion_matrix"] == m_resumed["test"]["confusion_matrix"]


@pytest.mark.slow  # four training processes: out of the default run's 3 minutes
def test_resume_refuses_other_settings(tmp_path, sample_dir):
    out = tmp_path / "run"
    where = [PYTHON, "train_accelerate.py", "--data", str(sample_dir), "--output-dir", str(out)]
    args = [*where, *tiny_run("logreg", 24, 1)]
    assert run_script(args).returncode == 0
    proc = run_script([*where, *tiny_run("logreg", 32, 1), "--resume"])
    assert proc.returncode == 2 and "--image-size 24" in proc.stderr
    # a recipe part changed on resume (the checkpoint holds no EMA) is refused as well
    proc = run_script([*args, "--ema-decay", "0.9", "--resume"])
    assert proc.returncode == 2 and "--ema-decay None (now 0.9)" in proc.stderr
    # so is augmenting elsewhere: the draws would differ from the epochs already done
    proc = run_script([*args, "--augment-on", "device", "--resume"])
    assert proc.returncode == 2 and "--augment-on 'loader' (now 'device')" in proc.stderr
