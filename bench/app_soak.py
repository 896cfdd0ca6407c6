"""Soak: ``python app.py`` served for a long time, as visitors use it, and measured as it runs.

A request every ``--request-every`` seconds, in turn: an upload analysed with heat maps (``/predict``), an upload
classified (``/classify``), an example clicked then analysed (``load_example``, then the page's own event), and an
upload analysed by the page and analysed again from the image the page kept. Every ``--page-every`` seconds (and
at the start and the end) a visit in headless Chromium: click an example, press Analyse, wait for every model's
heat map; then upload a film. Every ``--memory-every`` seconds the app's resident memory, and every
``--sample-every`` seconds what is in its Gradio cache (a folder of its own, ``GRADIO_TEMP_DIR``): files, bytes,
folders and the oldest file's age.

A single reading of resident memory depends on what the app is doing at that moment: a request in flight holds
tens of MB more than an idle app, and readings taken at a fixed interval can fall in step with the requests for
minutes at a time. So memory is read often and compared as medians over windows.

Printed: the samples, then the figures the targets are about, each with its target:

- failed requests and page visits (target: none);
- resident memory growth: the median of the readings in the ``--window`` seconds after the warm-up against the
  median of the last ``--window`` seconds (target < 5%), and the highest reading after the warm-up;
- the cache after its first full sweep: the oldest file seen (target: no older than the sweep allows, AGE +
  EVERY, plus one sampling interval) and the range of file counts (bounded: the end within that range, not
  climbing);
- latency of each kind of request in the first and the last ``--window`` seconds (medians).

    python bench/app_soak.py                                   # 30 minutes, the quick-start models
    python bench/app_soak.py --minutes 3 --cache-sweep 20,40   # a short check

Research use only — not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import DEFAULT_DATA, REPO, clean_up_app_files, free_port, machine, status_kib, table, wait_until_serving

QUICKSTART_MODELS = "runs/quickstart-lite0/model,runs/quickstart-logreg/model"
CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")


class PageClient:
    """Gradio's HTTP API as the page's JavaScript uses it: upload, join the queue, read the event stream."""

    def __init__(self, url: str):
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=300)
        deps = self.http.get(self.url + "/config").json()["dependencies"]
        self.fn_index = {d["api_name"]: i for i, d in enumerate(deps) if d.get("api_name")}

    def held_out_examples(self) -> List[int]:
        """The indices of the examples the page offers as held out from training by every model (the others, a
        model's own training films, are captioned with a ⚠ and offered only where a class has no held-out film)."""
        components = self.http.get(self.url + "/config").json()["components"]
        table = [c for c in components if c.get("props", {}).get("elem_id") == "examples"]
        samples = table[0]["props"]["samples"] if table else []
        return [i for i, (caption,) in enumerate(samples) if caption.endswith("held out from training")]

    def upload(self, path: Path) -> Dict[str, Any]:
        with open(path, "rb") as fh:
            r = self.http.post(self.url + "/gradio_api/upload", files=[("files", (path.name, fh, "image/png"))])
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, data: List[Any], session: Optional[str] = None) -> List[Any]:
        """The event's last outputs (streamed steps folded in); raises on a failed event."""
        from gradio_client.utils import apply_diff

        session = session or uuid.uuid4().hex
        join = {
            "data": data,
            "fn_index": self.fn_index[api_name],
            "session_hash": session,
            "event_data": None,
            "trigger_id": None,
        }
        self.http.post(self.url + "/gradio_api/queue/join", json=join).raise_for_status()
        raw = None
        with self.http.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                if msg.get("msg") == "process_generating":
                    update = msg["output"]["data"]
                    raw = update if raw is None else [apply_diff(o, d) for o, d in zip(raw, update)]
                elif msg.get("msg") == "process_completed":
                    if not msg.get("success", True):
                        raise RuntimeError(f"{api_name} failed: {str(msg)[:300]}")
                    return msg["output"]["data"] if raw is None else raw
        raise RuntimeError(f"{api_name}: the event stream ended without an answer")


def _check_answer(info: Dict[str, Any]) -> None:
    if info.get("error"):
        raise RuntimeError(info["error"])
    if any(entry.get("error") for entry in info["models"].values()):
        raise RuntimeError(str(info["models"])[:300])


def _check_page(status: str) -> None:
    """A page answer fails when it lacks the disclaimer or carries a ⚠ other than a model's out-of-distribution
    flag (a real answer: the guard of a small model flags some real films) or the note that a model trained on the
    uploaded film (the sample's films are the quick-start models' own)."""
    from cxr.app.examples import NOT_A_TEST
    from cxr.models.ood import OOD_MESSAGE

    warnings = [
        line for line in status.split("\n") if "⚠" in line and OOD_MESSAGE not in line and NOT_A_TEST not in line
    ]
    if warnings or "not for diagnosis" not in status:
        raise RuntimeError(status[:300])


def request_kinds(
    client: PageClient, films: List[Path], examples: List[int]
) -> List[Tuple[str, Callable[[int], None]]]:
    """The requests sent in turn, each a function of the request's number."""

    def predict(i):
        _check_answer(client.call("predict", [client.upload(films[i % len(films)]), "GradCAM", "predicted class"])[0])

    def classify(i):
        _check_answer(client.call("classify", [client.upload(films[i % len(films)])])[0])

    def example(i):
        session = uuid.uuid4().hex
        (film,) = client.call("load_example", [examples[i % len(examples)]], session)
        _check_page(client.call("analyse_page", [film, "GradCAM", "predicted class", None], session)[0])

    def page_twice(i):
        session, upload = uuid.uuid4().hex, client.upload(films[i % len(films)])
        out = client.call("analyse_page", [upload, "GradCAM", "predicted class", None], session)
        _check_page(out[0])
        _check_page(client.call("analyse_page", [upload, "EigenCAM", "Normal", out[-1]], session)[0])

    kinds = [("/predict", predict), ("/classify", classify), ("page, again", page_twice)]
    return kinds + ([("example", example)] if examples else [])


def browser_visit(url: str, film: Path, n_models: int, example: Optional[int]) -> None:
    """One visitor in headless Chromium: example number ``example`` clicked and analysed (if there is one), then
    an upload."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url, wait_until="load")
            page.wait_for_selector("text=not for diagnosis", timeout=60_000)
            if example is not None:
                page.locator("#examples button").nth(example).click()
                # the film arrives in the upload box before it is analysed
                has_film = "document.querySelector('#upload').innerText.includes('.png')"
                page.wait_for_function(has_film, timeout=30_000)
                _analysed(page, n_models, lambda: page.get_by_role("button", name="Analyse").click())
                if "held out" not in page.inner_text("#status"):
                    status = page.inner_text("#status")
                    raise RuntimeError("the example's status does not say it was held out: " + status)
                page.locator("#upload button[aria-label='Clear']").click()  # the example's film out of the box
            _analysed(page, n_models, lambda: page.set_input_files("#upload input[type=file]", str(film)))
        finally:
            browser.close()


def _analysed(page, n_models: int, action: Callable[[], None]) -> None:
    """Do ``action`` and wait until the page shows its finished analysis: a new status, no longer computing,
    with every model's heat map."""
    before = page.inner_text("#status")
    action()
    try:
        page.wait_for_function(
            "([before, n]) => { const s = document.querySelector('#status').innerText;"
            " return s !== before && !s.includes('Computing') && s.includes('not for diagnosis')"
            " && document.querySelectorAll('.model-column img').length >= n; }",
            arg=[before, n_models],
            timeout=120_000,
        )
    except Exception as e:  # playwright's TimeoutError: say what the page showed instead
        raise RuntimeError(
            f"no finished analysis within 120 s; the page's status: {page.inner_text('#status')!r}"
        ) from e
    _check_page(page.inner_text("#status"))


def rss_mib(pid: int) -> float:
    """Resident MiB of process ``pid``; 0 once it has exited."""
    return status_kib(pid) / 1024


def cache_state(root: Path) -> Dict[str, float]:
    """Files, bytes, folders and the oldest file's age (seconds, by ctime as Gradio's sweep ages them)."""
    files, folders, size, oldest = 0, 0, 0, 0.0
    now = time.time()
    for top, dirs, names in os.walk(root):  # os.walk skips a folder the sweep removes while it is walked
        folders += len(dirs)
        for name in names:
            try:
                st = os.lstat(os.path.join(top, name))
            except FileNotFoundError:  # swept meanwhile
                continue
            files, size, oldest = files + 1, size + st.st_size, max(oldest, now - st.st_ctime)
    return {"files": files, "bytes": size, "folders": folders, "oldest_s": oldest}


def _median_ms(values: List[float]) -> str:
    return f"{1000 * statistics.median(values):.0f}" if values else "–"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=QUICKSTART_MODELS, help="app.py --models (default: the quick start's two).")
    p.add_argument("--examples", default=DEFAULT_DATA, help="app.py --examples (default: $CXR_SAMPLE_DIR).")
    p.add_argument("--minutes", type=float, default=30, help="How long the app is served and used.")
    p.add_argument("--request-every", type=float, default=4, help="Seconds between request starts.")
    p.add_argument("--page-every", type=float, default=240, help="Seconds between Chromium visits.")
    p.add_argument("--sample-every", type=float, default=60, help="Seconds between the samples' table rows.")
    p.add_argument("--memory-every", type=float, default=5, help="Seconds between readings of resident memory.")
    p.add_argument("--warm-up", type=float, default=120, help="Seconds after which memory growth is counted.")
    p.add_argument(
        "--window",
        type=float,
        default=180,
        help="Seconds at the start and the end whose latencies are compared, and the memory windows' length.",
    )
    p.add_argument(
        "--cache-sweep", default=None, metavar="EVERY,AGE", help="app.py --cache-sweep (default: the app's own)."
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        metavar="N",
        help="app.py --max-sessions: sessions whose state the app keeps (default: the app's own).",
    )
    p.add_argument("--output", type=Path, default=None, help="Also write the tables to this markdown file.")
    args = p.parse_args()
    if min(args.minutes, args.request_every, args.page_every, args.sample_every, args.memory_every, args.window) <= 0:
        p.error(
            "--minutes, --request-every, --page-every, --sample-every, --memory-every and --window must be positive"
        )
    if not 0 <= args.warm_up < 60 * args.minutes:
        p.error("--warm-up must be at least 0 and shorter than the soak (--minutes)")
    from cxr.app.page import CACHE_SWEEP
    from cxr.commands.app import MAX_SESSIONS, parse_cache_sweep
    from cxr.locations import is_hub_id

    missing = [m for m in args.models.split(",") if not is_hub_id(m) and not (REPO / m).is_dir()]
    if missing:
        p.error(f"no model folder {', '.join(missing)}: run python app.py --quickstart DATA first, or pass --models")
    if not Path(CHROMIUM).exists():
        p.error(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CXR_CHROMIUM)")

    every, age = parse_cache_sweep(args.cache_sweep) if args.cache_sweep else CACHE_SWEEP
    films = sorted(Path(args.examples).glob("*/*.png"))[::37][:16] or sorted(Path(args.examples).rglob("*.png"))[:16]
    n_models = len(args.models.split(","))

    cache = Path(tempfile.mkdtemp(prefix="cxr-soak-gradio-"))
    port = free_port()
    cmd = [sys.executable, "app.py", "--models", args.models, "--examples", args.examples, "--port", str(port)]
    cmd += ["--cache-sweep", args.cache_sweep] if args.cache_sweep else []
    cmd += ["--max-sessions", str(args.max_sessions)] if args.max_sessions else []
    args.max_sessions = args.max_sessions or MAX_SESSIONS
    log = open(cache.parent / f"{cache.name}.log", "w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    startup = wait_until_serving(proc, url, log.name)
    client = PageClient(url)
    examples = client.held_out_examples()
    kinds = request_kinds(client, films, examples)
    first_example = examples[0] if examples else None
    record = Log([name for name, _ in kinds] + ["Chromium visit"])
    duration = 60 * args.minutes
    next_request = next_page = record.t0
    i = 0
    stop = threading.Event()

    def read_memory() -> None:
        mib = rss_mib(proc.pid)
        if mib > 0:  # 0: the app has exited (named among the failures)
            record.memory.append((record.elapsed(), mib))

    def sample() -> None:
        read_memory()
        record.samples.append({"t": record.elapsed(), **cache_state(cache)})

    def sampler() -> None:  # on its own thread: on time however long a request or a visit takes
        next_sample = record.elapsed() + args.sample_every
        while not stop.wait(min(args.memory_every, args.sample_every)):
            if record.elapsed() >= next_sample:
                next_sample += args.sample_every
                sample()
            else:
                read_memory()

    sample()
    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    try:
        while record.elapsed() < duration:
            now = time.monotonic()
            if now >= next_page:
                next_page += args.page_every
                record.timed("Chromium visit", browser_visit, url, films[i % len(films)], n_models, first_example)
            if now >= next_request:
                name, fn = kinds[i % len(kinds)]
                record.timed(name, fn, i)
                i += 1
                next_request += args.request_every
            if proc.poll() is not None:
                record.failures.append(f"{record.elapsed():.0f} s: the app exited with {proc.returncode}")
                break
            time.sleep(max(0.0, min(next_request, next_page) - time.monotonic()))
        record.timed("Chromium visit", browser_visit, url, films[0], n_models, first_example)
        stop.set()
        sampling.join()
        sample()
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=60)
    clean_up_app_files(cache, log, keep_log=bool(record.failures))
    text = report(args, record, startup, (every, age), i, len(examples))
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


class Log:
    """What the soak records: each kind's (seconds since start, latency) pairs, failures, the cache's samples and
    the (seconds since start, resident MiB) readings of memory."""

    def __init__(self, kinds: List[str]):
        self.t0 = time.monotonic()
        self.latencies: Dict[str, List[Tuple[float, float]]] = {k: [] for k in kinds}
        self.failures: List[str] = []
        self.samples: List[Dict[str, float]] = []
        self.memory: List[Tuple[float, float]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def timed(self, name: str, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)``; record its latency, or its failure (named, and the soak goes on)."""
        start = time.monotonic()
        try:
            fn(*args)
            self.latencies[name].append((self.elapsed(), time.monotonic() - start))
        except Exception as e:
            self.failures.append(f"{self.elapsed():.0f} s, {name}: {type(e).__name__}: {str(e)[:200]}")


def memory_between(memory: List[Tuple[float, float]], start: float, end: float) -> List[float]:
    """The readings of resident memory taken from ``start`` to ``end`` seconds (both included)."""
    return [mib for t, mib in memory if start <= t <= end]


def report(args, record: "Log", startup, sweep, requests, examples) -> str:
    every, age = sweep
    samples, latencies, failures, memory = record.samples, record.latencies, record.failures, record.memory
    end = samples[-1]["t"]
    at_start = memory_between(memory, args.warm_up, args.warm_up + args.window)
    at_end = memory_between(memory, end - args.window, end)
    if at_start and at_end:
        before, after = statistics.median(at_start), statistics.median(at_end)
        growth = f"{before:.0f} → {after:.0f} MiB, {100 * (after - before) / before:+.1f}% (target < 5%)"
    else:
        growth = "no reading in a window: the app exited (target < 5%)"
    warm = [(t, mib) for t, mib in memory if t >= args.warm_up]
    peak_t, peak_mib = max(warm, key=lambda r: r[1]) if warm else (0.0, 0.0)
    peak = f"{peak_mib:.0f} MiB at minute {peak_t / 60:.1f}" if warm else "–"
    swept = [s for s in samples if s["t"] >= age + every]
    oldest = max((s["oldest_s"] for s in swept), default=None)
    rows = []
    for previous, s in zip([None, *samples], samples):
        since = memory_between(memory, previous["t"] + 1e-9 if previous else 0.0, s["t"]) or [0.0]
        rows.append(
            [
                f"{s['t'] / 60:.1f}",
                f"{statistics.median(since):.0f}",
                f"{max(since):.0f}",
                s["files"],
                f"{s['bytes'] / 2**20:.1f}",
                s["folders"],
                f"{s['oldest_s']:.0f}",
            ]
        )
    lat_rows = []
    for name, values in latencies.items():
        first = [v for t, v in values if t <= args.window]
        last = [v for t, v in values if t >= end - args.window]
        lat_rows.append([name, len(values), _median_ms(first), _median_ms(last)])
    bound = age + every + args.sample_every
    summary = [
        ["requests and Chromium visits", f"{requests} requests, {len(latencies['Chromium visit'])} visits"],
        [
            "visitor sessions",
            f"{requests + len(latencies['Chromium visit'])} (one per request or visit; the app keeps the state of "
            f"the {args.max_sessions} most recent)",
        ],
        ["examples clicked", f"{examples} (those every model held out)"],
        ["failed", f"{len(failures)} (target: none)"],
        ["startup until it answers", f"{startup:.1f} s"],
        [
            f"resident memory, median of minutes {args.warm_up / 60:.1f}–{(args.warm_up + args.window) / 60:.1f} → "
            f"{(end - args.window) / 60:.1f}–{end / 60:.1f} (read every "
            f"{min(args.memory_every, args.sample_every):g} s)",
            growth,
        ],
        ["resident memory, highest reading after the warm-up", peak],
        [
            "oldest file in the cache once a sweep could have run",
            "no sample after the first full sweep (run longer)"
            if oldest is None
            else f"{oldest:.0f} s (the sweep allows {age} + {every} s, sampled every {args.sample_every:.0f} s: "
            f"≤ {bound:.0f} s)",
        ],
        [
            "cache files after the first full sweep",
            "–"
            if not swept
            else f"{min(s['files'] for s in swept)} to {max(s['files'] for s in swept)} (end: {samples[-1]['files']})",
        ],
    ]
    parts = [
        f"`python bench/app_soak.py --minutes {args.minutes:g} --request-every {args.request_every:g} --page-every "
        f"{args.page_every:g} --warm-up {args.warm_up:g} --max-sessions {args.max_sessions}` on `{args.models}`, "
        f"examples from `{args.examples}`, cache sweep every {every} s for files older than {age} s. {machine()}",
        "",
        table(
            [
                "minute",
                "resident MiB, median since the row before",
                "resident MiB, highest",
                "cache files",
                "cache MiB",
                "cache folders",
                "oldest file s",
            ],
            rows,
        ),
        "",
        table(
            ["request", "count", f"median ms, first {args.window:.0f} s", f"median ms, last {args.window:.0f} s"],
            lat_rows,
        ),
        "",
        table(["soak", "value"], summary),
    ]
    if failures:
        parts += ["", "Failures:", *[f"- {f}" for f in failures[:20]]]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
