"""Shared fixtures: the real chest X-ray sample (never copied into the repository), an offline Hub,
a per-session pixel cache, and small symlinked subsets of the sample in both Kaggle layouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real sample (600 PNGs, 150 per class): $CXR_SAMPLE_DIR, default ../shared/data/cxr-sample.
SAMPLE_DIR = Path(os.environ.get("CXR_SAMPLE_DIR", REPO.parent / "shared" / "data" / "cxr-sample")).resolve()
#: Normal films from outside the database: for measuring generalisation only (never trained, tuned or calibrated on).
EXTERNAL_DEV_DIR = Path(
    os.environ.get("CXR_EXTERNAL_DEV_DIR", REPO.parent / "shared" / "data" / "cxr-external-dev")
).resolve()
CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")

# Nothing in the tests may reach the Hub: a missed download fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (the full suite)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (the README's full test command)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not all((SAMPLE_DIR / c).is_dir() for c in CLASSES):
        pytest.fail(f"the chest X-ray sample is not at {SAMPLE_DIR}; set CXR_SAMPLE_DIR")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def external_dev_dir() -> Path:
    if not (EXTERNAL_DEV_DIR / "Normal").is_dir():
        pytest.fail(f"the external dev set is not at {EXTERNAL_DEV_DIR}; set CXR_EXTERNAL_DEV_DIR")
    return EXTERNAL_DEV_DIR


@pytest.fixture(scope="session", autouse=True)
def pixel_cache(tmp_path_factory) -> Path:
    """A fresh resized-pixel cache for the session (also used by subprocesses)."""
    path = tmp_path_factory.mktemp("cxr-cache")
    os.environ["CXR_CACHE_DIR"] = str(path)
    return path


def sample_files(sample_dir: Path, per_class: int) -> Dict[str, List[Path]]:
    """The first ``per_class`` images of each class, sorted by name."""
    return {c: sorted((sample_dir / c).glob("*.png"))[:per_class] for c in CLASSES}


def make_subset(root: Path, sample_dir: Path, per_class: int, kaggle_layout: bool = False) -> Path:
    """Symlink a per-class subset of the sample into ``root`` (flat or ``<Class>/images/`` with masks)."""
    for c, files in sample_files(sample_dir, per_class).items():
        folder = root / c / "images" if kaggle_layout else root / c
        folder.mkdir(parents=True)
        for f in files:
            (folder / f.name).symlink_to(f)
        if kaggle_layout:  # masks must be ignored
            (root / c / "masks").mkdir()
            for f in files[:2]:
                (root / c / "masks" / f.name).symlink_to(f)
    return root


@pytest.fixture
def subset(tmp_path, sample_dir) -> Path:
    """A writable flat-layout subset: 10 real images per class."""
    return make_subset(tmp_path / "data", sample_dir, 10)


def run_script(args: List[str], timeout: int = 600, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command of the repository as a user would, in a fresh process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def launch_errors(proc: subprocess.CompletedProcess, tail: int = 1500) -> str:
    """What a failed ``accelerate launch`` printed that says why: each process's own lines (``[rankN]: ...``,
    where a crash on one rank shows as "connection closed" on the others) and the tail of its stderr."""
    ranks = [line for line in proc.stderr.splitlines() if line.startswith("[rank") and "]: " in line]
    return "\n".join(ranks[-80:]) + "\n...\n" + proc.stderr[-tail:]


def wait_until_serving(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> bytes:
    """Poll ``url`` until the server started as ``proc`` answers; fail with its log if it exits or never does.

    Returns:
        The first answer's body.
    """
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s: " + log.read_text()[-3000:])


PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.fixture(scope="session")
def app_models(tmp_path_factory, sample_dir):
    """Two tiny models trained on the sample for the launched-app tests: EfficientNet-Lite0 at 64 px and the pixel
    baseline at 24 px, one epoch each; their model folders."""
    from cxr.cli import train_main

    root = tmp_path_factory.mktemp("app-models")
    runs = {
        "lite0": ["--model", "tf_efficientnet_lite0", "--image-size", "64"],
        "logreg": ["--model", "logreg", "--image-size", "24"],
    }
    for name, args in runs.items():
        code = train_main(
            [*args, "--data", str(sample_dir), "--output-dir", str(root / name), "--epochs", "1", "--num-workers", "0"]
        )
        assert code == 0
    return [str(root / name / "model") for name in runs]
