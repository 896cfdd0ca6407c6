"""Helpers for tests that launch the app as a user would and drive it over HTTP as the page does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from conftest import PYTHON, REPO, wait_until_serving

__all__ = ["free_port", "launch_app", "stop", "rss_kib", "upload_file", "call", "example_table"]


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
