"""The app under a crowd: ``python app.py`` with its default queue and concurrency, and N visitors at once.

For each N of ``--clients`` (default 1, 4, 16, 32, 150), N visitors start together; half of them use
``gradio_client`` and half Gradio's HTTP API as the page does (upload, join the queue, read the server-sent
events), each sending real films to ``/predict`` (every model's answer and heat map) one after the other for
``--seconds`` and fetching the heat maps of each answer, as the page does, over the visitor's one kept
connection (``gradio_client``'s own download opens a new connection with a new TLS context for every file: in a
first version of this script that took most of the crowd's CPU, on the cores the app runs on). Every request the
visitors make, ``gradio_client``'s own included, may take up to ``--timeout`` seconds. A request is

- **answered**: its answer arrived, with every model's probabilities, no error, and its heat maps fetched;
- **refused**: the queue was full and the visitor was told so — the app's busy sentence in the HTTP 503, or
  ``gradio_client``'s "Queue is full! Please try again.";
- **failed**: anything else — an error, a wrong answer, or no answer within ``--timeout`` seconds (120).

Printed per N: requests answered, refused and failed; latency percentiles of the answered (p50/p95/p99, seconds);
answers per second; the app's resident memory before and at its peak. With ``--browser``, a headless Chromium page
is opened while the largest crowd runs and a film uploaded there: it must show the analysis or Gradio's busy line.

Targets (issue: "At the database's size and beyond"): 0 failed at every N; answers per second at 16 clients at least
0.8× that at 4.

    python bench/app_load.py --models runs/quickstart-lite0/model,runs/quickstart-logreg/model --browser

Research use only — not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from app_soak import rss_mib
from common import DEFAULT_DATA, REPO, answer_client, clean_up_app_files, free_port, machine, table, wait_until_serving

from cxr.app.gradio_internals import BUSY

QUICKSTART_MODELS = "runs/quickstart-lite0/model,runs/quickstart-logreg/model"
CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
#: What gradio_client raises when the server refuses a request because its queue is full.
CLIENT_BUSY = "Queue is full! Please try again."
#: What Gradio's page shows for the same refusal.
PAGE_BUSY = "This application is currently busy"


class Refused(Exception):
    """The app said it is busy."""


def _check(info: Dict[str, Any], n_models: int) -> None:
    if info.get("error") or len(info.get("models", {})) != n_models:
        raise RuntimeError(str(info)[:300])
    for entry in info["models"].values():
        if entry.get("error") or not entry.get("probabilities"):
            raise RuntimeError(str(entry)[:300])


def fetch_heat_maps(http: Any, gallery: List[Dict[str, Any]]) -> None:
    """Fetch each heat map of an answer's gallery, as the page does to show them; raises unless each is a PNG."""
    for item in gallery or []:
        r = http.get(item["image"]["url"])
        r.raise_for_status()
        if not r.content.startswith(b"\x89PNG"):
            raise RuntimeError(
                f"heat map {item['image']['url']} is not a PNG: {len(r.content)} bytes, {r.content[:16]!r}, "
                f"{r.headers.get('content-type')}"
            )


def http_predict(http: Any, url: str, fn_index: int, film: Path, timeout: float) -> Tuple[Dict[str, Any], Any]:
    """``/predict`` as the page's JavaScript sends it: the answer and its gallery; raises :class:`Refused` on the
    busy 503."""
    with open(film, "rb") as fh:
        r = http.post(url + "gradio_api/upload", files=[("files", (film.name, fh, "image/png"))])
    r.raise_for_status()
    upload = {"path": r.json()[0], "orig_name": film.name, "meta": {"_type": "gradio.FileData"}}
    session = uuid.uuid4().hex
    join = {
        "data": [upload, "GradCAM", "predicted class"],
        "fn_index": fn_index,
        "session_hash": session,
        "event_data": None,
        "trigger_id": None,
    }
    r = http.post(url + "gradio_api/queue/join", json=join)
    if r.status_code == 503:
        if r.json().get("detail") != BUSY:
            raise RuntimeError(f"503 without the busy sentence: {r.text[:200]}")
        raise Refused()
    r.raise_for_status()
    deadline = time.monotonic() + timeout
    with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as ev:
        for line in ev.iter_lines():
            msg = json.loads(line[5:]) if line.startswith("data:") else {}
            if msg.get("msg") == "process_completed":
                if not msg.get("success", True):
                    raise RuntimeError(str(msg)[:300])
                return msg["output"]["data"][0], msg["output"]["data"][1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer within {timeout:.0f} s")
    raise RuntimeError("the event stream ended without an answer")


def client_predict(client: Any, film: Path, timeout: float) -> Tuple[Dict[str, Any], Any]:
    """``/predict`` through ``gradio_client``: the answer and its gallery; raises :class:`Refused` when it reports
    the full queue."""
    from gradio_client import handle_file

    try:
        job = client.submit(handle_file(str(film)), "GradCAM", "predicted class", api_name="/predict")
        info, gallery = job.result(timeout=timeout)
        return info, gallery
    except Exception as e:  # gradio_client's QueueError, raised in the job
        if CLIENT_BUSY in str(e):
            raise Refused() from e
        raise


def visitor(
    k: int, url: str, films: List[Path], until: float, timeout: float, n_models: int, out: List[Dict[str, Any]]
) -> None:
    """One visitor: requests one after the other until ``until``; each outcome appended to ``out``."""
    import httpx

    use_client = k % 2 == 0
    try:
        http = httpx.Client(timeout=timeout)  # the visitor's kept connection: the page, uploads, heat maps
        client = answer_client(url, timeout=timeout, download=False) if use_client else None
        fn_index = None
        if not use_client:
            deps = http.get(url + "config").json()["dependencies"]
            fn_index = next(i for i, d in enumerate(deps) if d.get("api_name") == "predict")
    except Exception as e:  # noqa: BLE001 - the visitor could not even connect: a failure
        out.append({"outcome": "failed", "seconds": 0.0, "why": f"connect: {e}"[:200]})
        return
    i = k
    while time.monotonic() < until:
        film = films[i % len(films)]
        i += 1
        t0 = time.monotonic()
        try:
            info, gallery = (
                client_predict(client, film, timeout)
                if use_client
                else http_predict(http, url, fn_index, film, timeout)
            )
            _check(info, n_models)
            fetch_heat_maps(http, gallery)
            out.append({"outcome": "answered", "seconds": time.monotonic() - t0})
        except Refused:
            out.append({"outcome": "refused", "seconds": time.monotonic() - t0})
            time.sleep(1.0)  # as a visitor told to try again would
        except Exception as e:  # noqa: BLE001 - every other outcome is a failure, recorded with its reason
            out.append({"outcome": "failed", "seconds": time.monotonic() - t0, "why": f"{type(e).__name__}: {e}"[:200]})


def browser_visit(url: str, film: Path, timeout: float) -> str:
    """A page opened while the crowd runs: upload ``film``; the page's status once it answered or said busy."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url, wait_until="load", timeout=timeout * 1000)
            page.wait_for_selector("text=not for diagnosis", timeout=timeout * 1000)
            before = page.inner_text("#status")
            page.set_input_files("#upload input[type=file]", str(film))
            try:
                page.wait_for_function(
                    "([before, busy]) => { const s = document.querySelector('#status').innerText;"
                    " return document.body.innerText.includes(busy)"
                    " || (s !== before && !s.includes('Computing') && s.includes('not for diagnosis')); }",
                    arg=[before, PAGE_BUSY],
                    timeout=timeout * 1000,
                )
            except Exception as e:  # playwright's TimeoutError: say what the page showed instead
                status = page.inner_text("#status")
                raise RuntimeError(f"no answer within {timeout:.0f} s; the page's status: {status!r}") from e
            return "busy" if PAGE_BUSY in page.inner_text("body") else "answered"
        finally:
            browser.close()


def crowd(
    url: str, pid: int, n: int, films: List[Path], seconds: float, timeout: float, n_models: int, browser: bool
) -> Dict[str, Any]:
    """``n`` visitors at once for ``seconds``; their outcomes, the memory and (with ``browser``) the page's."""
    outcomes: List[Dict[str, Any]] = []
    start = time.monotonic()
    until = start + seconds
    before = rss_mib(pid)
    threads = [
        threading.Thread(target=visitor, args=(k, url, films, until, timeout, n_models, outcomes), daemon=True)
        for k in range(n)
    ]
    for t in threads:
        t.start()
    page: Optional[str] = None
    peak = before
    if browser:
        time.sleep(min(5.0, seconds / 4))  # the crowd has filled the queue
        try:
            page = browser_visit(url, films[0], timeout)
        except Exception as e:  # noqa: BLE001 - recorded as the page's failure
            page = f"failed: {type(e).__name__}: {e}"[:200]
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(pid))
        time.sleep(0.2)
    wall = time.monotonic() - start
    return {"outcomes": outcomes, "wall": wall, "rss_before": before, "rss_peak": peak, "page": page}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=QUICKSTART_MODELS, help="app.py --models (default: the quick start's two).")
    p.add_argument("--data", default=DEFAULT_DATA, help="Class folders whose films the visitors send.")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32, 150], help="Crowd sizes, in turn.")
    p.add_argument("--seconds", type=float, default=60, help="How long each crowd keeps sending requests.")
    p.add_argument("--timeout", type=float, default=120, help="Seconds a request may take before it has failed.")
    p.add_argument("--browser", action="store_true", help="Open a Chromium page during the largest crowd.")
    p.add_argument(
        "--max-queue", type=int, default=None, help="app.py --max-queue (default: the app's own, as the targets use)."
    )
    p.add_argument("--output", type=Path, default=None, help="Also write the table to this markdown file.")
    args = p.parse_args()
    if min(args.clients) < 1 or args.seconds <= 0 or args.timeout <= 0:
        p.error("--clients must be at least 1, --seconds and --timeout positive")
    from cxr.locations import is_hub_id

    models = args.models.split(",")
    missing = [m for m in models if not is_hub_id(m) and not (REPO / m).is_dir() and not Path(m).is_dir()]
    if missing:
        p.error(f"no model folder {', '.join(missing)}: run python app.py --quickstart DATA first, or pass --models")
    if args.browser and not Path(CHROMIUM).exists():
        p.error(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CXR_CHROMIUM)")
    films = sorted(Path(args.data).glob("*/*.png"))[::7][:24]
    if not films:
        p.error(f"no PNG films in the class folders of {args.data}")

    cache = Path(tempfile.mkdtemp(prefix="cxr-load-gradio-"))
    port = free_port()
    log = open(cache.parent / f"{cache.name}.log", "w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "app.py", "--models", args.models, "--port", str(port)]
    cmd += ["--max-queue", str(args.max_queue)] if args.max_queue else []
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url, log.name)
    rows, failures, pages = [], [], []
    try:
        for n in args.clients:
            browser = args.browser and n == max(args.clients)
            r = crowd(url, proc.pid, n, films, args.seconds, args.timeout, len(models), browser)
            got = {k: [o for o in r["outcomes"] if o["outcome"] == k] for k in ("answered", "refused", "failed")}
            lat = [o["seconds"] for o in got["answered"]]
            pct = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
            failures += [f"{n} clients: {o['why']}" for o in got["failed"]]
            if r["page"] is not None:
                pages.append(f"{n} clients: the page {r['page']}")
            rows.append(
                [
                    n,
                    len(got["answered"]),
                    len(got["refused"]),
                    len(got["failed"]),
                    *(f"{x:.2f}" for x in pct),
                    f"{len(lat) / r['wall']:.2f}",
                    f"{r['rss_before']:.0f}",
                    f"{r['rss_peak']:.0f}",
                ]
            )
            print(f"{n} clients: {rows[-1][1:4]} answered/refused/failed", flush=True)
            if proc.poll() is not None:
                failures.append(f"the app exited with {proc.returncode}")
                break
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    page_failed = any(" the page failed" in p for p in pages)
    clean_up_app_files(cache, log, keep_log=bool(failures) or page_failed)
    throughput = {row[0]: float(row[7]) for row in rows}
    lines = [
        f"App under load: {len(models)} models, /predict with Grad-CAM, "
        + (f"--max-queue {args.max_queue}" if args.max_queue else "app.py's default queue")
        + " and concurrency, "
        f"{args.seconds:.0f} s per crowd, half gradio_client and half plain HTTP — {machine()}",
        "",
        table(
            [
                "clients",
                "answered",
                "refused (busy)",
                "failed",
                "p50 s",
                "p95 s",
                "p99 s",
                "answers per s",
                "resident MiB before",
                "resident MiB peak",
            ],
            rows,
        ),
        "",
    ]
    if 4 in throughput and 16 in throughput and throughput[4] > 0:
        lines.append(f"answers per second at 16 clients / at 4: {throughput[16] / throughput[4]:.2f}× (target ≥ 0.8×)")
    lines += pages
    lines.append(f"failed requests: {len(failures)} (target: none)")
    lines += [f"- {f}" for f in failures[:20]]
    text = "\n".join(lines)
    print("\n" + text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
