"""Shared fixtures: the real chest X-ray sample (never copied into the repository), an offline Hub and its local
stand-in, a per-session pixel cache, a small symlinked subset, two tiny app models. Helpers: ``helpers.py``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import CLASSES, EXTERNAL_DEV_DIR, SAMPLE_DIR, make_subset, tiny_run
from hub_server import LocalHub

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


@pytest.fixture(scope="session", autouse=True)
def system_temp(tmp_path_factory) -> Path:
    """The tests' own system temp folder, so nothing a test calls leaves files in /tmp: ``gradio_client`` makes
    one folder per downloaded answer file there and leaves it behind, empty, after moving the file out."""
    path = tmp_path_factory.mktemp("system-temp")
    previous, tempfile.tempdir = tempfile.tempdir, str(path)
    yield path
    tempfile.tempdir = previous


@pytest.fixture
def subset(tmp_path, sample_dir) -> Path:
    """A writable flat-layout subset: 10 real images per class."""
    return make_subset(tmp_path / "data", sample_dir, 10)


@pytest.fixture(scope="module")
def hub():
    """The Hub stand-in (``tests/hub_server.py``) on 127.0.0.1, one per test module."""
    server = LocalHub().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app_models(tmp_path_factory, sample_dir):
    """Two tiny models trained on the sample for the launched-app tests: EfficientNet-Lite0 at 64 px and the pixel
    baseline at 24 px, one epoch each; their model folders. Trained once per test run: the parallel workers of
    one run share them (the first to need them trains them, the others wait on a lock); no test writes into them."""
    import fcntl

    from cxr.commands.train import main as train_main

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's folder, every worker's
    root = shared / "app-models"
    runs = {"lite0": tiny_run("tf_efficientnet_lite0", 64), "logreg": tiny_run("logreg", 24)}
    with open(shared / "app-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "trained").exists():
            shutil.rmtree(root, ignore_errors=True)
            for name, args in runs.items():
                assert train_main([*args, "--data", str(sample_dir), "--output-dir", str(root / name)]) == 0
            (root / "trained").touch()
    return [str(root / name / "model") for name in runs]
