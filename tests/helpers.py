"""What the tests share: the real data's locations, subsets of it, running the repository's commands as a user
does (one process or a two-process ``accelerate launch``), a tiny training run's flags, the Hub stand-in's
environment, and launching the app and driving it over HTTP as the page does.

Fixtures live in ``conftest.py``; test modules import helpers from here, never from each other.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from hub_server import TOKEN

__all__ = [
    "REPO",
    "SAMPLE_DIR",
    "EXTERNAL_DEV_DIR",
    "CLASSES",
    "PYTHON",
    "ACCELERATE",
    "TWO_PROCESSES",
    "TWO_PROCESS_ENV",
    "tiny_run",
    "sample_files",
    "make_subset",
    "run_script",
    "launch_errors",
    "wait_until_serving",
    "hub_env",
    "free_port",
    "launch_app",
    "stop",
    "rss_kib",
    "upload_file",
    "call",
    "example_table",
    "run_bench",
    "run_experiment",
    "markdown_tables",
]

REPO = Path(__file__).resolve().parents[1]
#: The real sample (600 PNGs, 150 per class): $CXR_SAMPLE_DIR, default ../shared/data/cxr-sample.
SAMPLE_DIR = Path(os.environ.get("CXR_SAMPLE_DIR", REPO.parent / "shared" / "data" / "cxr-sample")).resolve()
#: Normal films from outside the database: for measuring generalisation only (never trained, tuned or calibrated on).
EXTERNAL_DEV_DIR = Path(
    os.environ.get("CXR_EXTERNAL_DEV_DIR", REPO.parent / "shared" / "data" / "cxr-external-dev")
).resolve()
CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")

PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
#: ``accelerate launch`` of two CPU processes (DDP): plain ``--cpu --num_processes 2`` silently runs one. Run with
#: :data:`TWO_PROCESS_ENV`; the script and its flags follow.
TWO_PROCESSES = [
    ACCELERATE,
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
TWO_PROCESS_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def tiny_run(model: str = "logreg", image_size: int = 24, epochs: int = 1, *extra: str) -> List[str]:
    """The flags of a training run small enough for a test (no loader workers): the model, its size, epochs."""
    return ["--model", model, "--image-size", str(image_size), "--epochs", str(epochs), "--num-workers", "0", *extra]


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


def hub_env(hub, tmp_path: Path, token: Optional[str] = TOKEN, offline: bool = False) -> Dict[str, str]:
    """Point huggingface_hub (and datasets' cache) of a fresh process at the Hub stand-in (``tests/hub_server.py``)
    and a private ``HF_HOME``; ``token`` is the one it sends (the stand-in's by default; empty or ``None``: none,
    whatever the caller's environment has)."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token or "",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(args, log: Path, cwd: Path = REPO, env=None, timeout: float = 120):
    """Start ``app.py ARGS`` on a free port as a user would; returns its URL and process once it answers."""
    port = free_port()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [PYTHON, str(REPO / "app.py"), *args, "--port", str(port)],
            cwd=cwd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env or {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, proc, log, timeout=timeout)
    return url, proc


def stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def upload_file(url: str, path: Path) -> dict:
    """Upload a file as the page does; returns the FileData that events take."""
    import httpx

    with open(path, "rb") as fh:
        r = httpx.post(url + "gradio_api/upload", files=[("files", (path.name, fh, "application/octet-stream"))])
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def call(url: str, api_name: str, data: list, session: str) -> list:
    """Run an event through Gradio's queue as the page's JavaScript does; returns its outputs as the page
    shows them at the end (streamed steps after the first are diffs of the step before)."""
    import httpx
    from gradio_client.utils import apply_diff

    deps = httpx.get(url + "config").json()["dependencies"]
    fn_index = next(i for i, d in enumerate(deps) if d.get("api_name") == api_name)
    join = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    httpx.post(url + "gradio_api/queue/join", json=join).raise_for_status()
    raw, shown = None, None
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=300) as events:
        for line in events.iter_lines():
            msg = json.loads(line[5:]) if line.startswith("data:") else {}
            if msg.get("msg") not in ("process_generating", "process_completed"):
                continue
            assert msg.get("success", True), msg
            update = msg["output"]["data"]
            if msg["msg"] == "process_generating":
                raw = update if raw is None else [apply_diff(old, diff) for old, diff in zip(raw, update)]
                update = raw
            assert not any(o == {"__type__": "update"} for o in update), update  # no gr.skip(): see stream
            shown = update
            if msg["msg"] == "process_completed":
                return shown
    raise AssertionError("no answer")


def example_table(url: str) -> dict:
    import httpx

    components = httpx.get(url + "config").json()["components"]
    return next(c for c in components if c.get("props", {}).get("elem_id") == "examples")


def run_bench(script: str, *args: str, folder: str = "bench", env: Optional[Dict[str, str]] = None) -> str:
    """Run ``FOLDER/SCRIPT ARGS`` (``bench/`` unless told) as a user does, with ``env`` added to the environment;
    its standard output, once it exited 0."""
    out = subprocess.run(
        [sys.executable, f"{folder}/{script}", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def run_experiment(script: str, *args: str) -> str:
    """Run ``experiments/SCRIPT ARGS`` (the measurements behind the recipe) as a user does; its standard output."""
    return run_bench(script, *args, folder="experiments")


def markdown_tables(text: str) -> List[List[Dict[str, str]]]:
    """Every markdown table of ``text`` as a list of rows keyed by header."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i > 0 and lines[i - 1].startswith("| "):
            header = [c.strip() for c in lines[i - 1].strip("|").split("|")]
            rows = []
            for row in lines[i + 1 :]:
                if not row.startswith("| "):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
            tables.append(rows)
    return tables
