"""Shared helpers of the benchmark scripts: timing, the machine's description, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = os.environ.get("CXR_SAMPLE_DIR", str(REPO.parent / "shared" / "data" / "cxr-sample"))


def machine() -> str:
    """Cores, CPU model, torch and its thread count, date: the context every table needs."""
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores, {cpu}, {gpu}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {time.strftime('%Y-%m-%d')}"
    )


def table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def rotated(arms: Sequence[str], round_index: int) -> List[str]:
    """``arms`` in the order of round ``round_index``: each round starts one arm later."""
    k = round_index % len(arms)
    return [*arms[k:], *arms[:k]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_kib(pid: int, key: str = "VmRSS") -> int:
    """A field of ``/proc/PID/status`` in KiB: resident memory (``VmRSS``) or its peak since the last reset
    (``VmHWM``); 0 once the process has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


#: Runs ``python -c _CXR_ALLOCATOR_FIRST SCRIPT ARGS`` as ``python SCRIPT ARGS`` would, with cxr's allocator
#: settings applied first and the heap's free memory handed back periodically, as in a cxr program (the working
#: folder is the repository's).
_CXR_ALLOCATOR_FIRST = (
    "import os, runpy, sys; from cxr.allocator import keep_freed_memory, release_periodically; "
    "keep_freed_memory(); release_periodically(); "
    "sys.argv = sys.argv[1:]; sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0])); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_worker(
    script: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None, launcher: Optional[Sequence[str]] = None
) -> Any:
    """Run one measurement arm as ``python bench/SCRIPT ARGV`` (or ``LAUNCHER bench/SCRIPT ARGV``, e.g.
    ``accelerate launch``) in fresh processes; return the JSON it prints last.

    Each arm gets its own process so that process-wide settings (the allocator settings of
    :mod:`cxr.allocator`, thread pools, warmed caches) of one arm cannot leak into another. Without a launcher the
    process has cxr's allocator settings from its start, as every cxr program has them (importing
    :mod:`cxr.commands` applies them before numpy and torch are imported), and hands its heap's free memory back
    every :data:`cxr.allocator.RELEASE_EVERY_S` seconds, as :func:`cxr.commands.common.run_cli` does; an arm
    measuring the C library's defaults (a plain loop, ``CXR_KEEP_FREED_MEMORY=0``) passes :func:`keep_defaults_env`.
    """
    out = subprocess.run(
        [*(launcher or [sys.executable, "-c", _CXR_ALLOCATOR_FIRST]), str(Path(__file__).parent / script), *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{script} {' '.join(argv)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def keep_defaults_env() -> Dict[str, str]:
    """The environment of an arm that runs cxr with the C library's allocator defaults."""
    from cxr.allocator import ENV_VAR

    return {ENV_VAR: "0"}


_answers: Optional[str] = None  # the one folder answer_client's downloads go to, made on first use
_tls: Any = None  # the one TLS context every answer_client shares, made on first use


def answer_client(url: str, timeout: Optional[float] = None, download: bool = True) -> Any:
    """A ``gradio_client.Client`` that leaves nothing in the system temp folder. It downloads each answer file
    through a folder of its own there and leaves that folder behind, empty; so on first use the script's temp
    folder is pointed at one folder of ours, removed with the answer files when the script exits.

    ``timeout``: seconds for each of the client's own HTTP requests (its configuration, uploads, joining the
    queue; httpx's default is 5). ``download=False``: answer files are returned as their URLs, not fetched.

    ``gradio_client`` sends most requests through a new connection (``httpx.post``), and httpx builds a new TLS
    context for each — loading the certificate store, even for ``http://``; every
    client here shares one context instead, so that a crowd of clients on the app's own machine costs what its
    requests cost."""
    import atexit
    import shutil
    import tempfile

    from gradio_client import Client

    global _answers
    if _answers is None:
        _answers = tempfile.mkdtemp(prefix="cxr-bench-answers-")
        atexit.register(shutil.rmtree, _answers, True)
        tempfile.tempdir = _answers
    httpx_kwargs = {"timeout": timeout} if timeout else None
    global _tls
    if _tls is None:
        import ssl

        _tls = ssl.create_default_context()
    return Client(
        url,
        verbose=False,
        download_files=_answers if download else False,
        httpx_kwargs=httpx_kwargs,
        ssl_verify=_tls,  # passed on as httpx's verify=, which takes a context as it is
    )


def clean_up_app_files(cache: Path, log: IO[str], keep_log: bool) -> None:
    """Remove the Gradio cache folder a benchmark gave its app, and the app's log beside it unless ``keep_log``
    (something failed: the log is named instead). Both stay when the benchmark broke off before this."""
    import shutil

    log.close()
    shutil.rmtree(cache, ignore_errors=True)
    if keep_log:
        print(f"the app's log: {log.name}")
    else:
        os.unlink(log.name)


def wait_until_serving(proc: "subprocess.Popen", url: str, log_name: str, limit: float = 300) -> float:
    """Wait until the app ``proc`` answers at ``url``; the seconds it took. Exits naming ``log_name`` when the
    process ends first or ``limit`` seconds pass."""
    import urllib.request

    t0 = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.monotonic() - t0
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > limit:
                raise SystemExit(f"the app did not start: see {log_name}") from None
            time.sleep(0.5)
