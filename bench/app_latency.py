"""App latency, startup and memory: the app's own prediction path and its HTTP API against the
running app, beside the bare models' forward (and forward+backward, what a CAM needs) timed in the
same run.

Models: the study-era four (alexnet, vgg19_bn, resnet50, logreg; random weights — timing does not
depend on them) saved as cxr checkpoints at ``--image-size``. Every arm runs in its own process: the
bare models in a plain one; the app's code in one set up as ``python app.py`` sets up its own (glibc
keeps freed memory, :mod:`cxr.allocator`), and again with ``CXR_KEEP_FREED_MEMORY=0``. Reported:

1. per model and for all together: time to first probabilities and to all heat maps through
   :meth:`cxr.app.board.ModelBoard.analyse`, against the sum of bare forwards / forward+backwards;
2. forwards per model per request (hooks count them; the target is 1);
3. the same two times against ``python app.py``: through ``gradio_client`` and through Gradio's
   HTTP API as a browser uses it (upload, join the queue, read the server-sent events), each beside
   the same client's times against a do-nothing Gradio app with the same inputs and outputs (the
   transport's own cost);
4. startup time of ``python app.py`` until it answers, peak resident memory, and its growth over
   ``--requests`` requests.

    python bench/app_latency.py --image-size 224 --requests 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from common import (
    DEFAULT_DATA,
    REPO,
    answer_client,
    free_port,
    keep_defaults_env,
    machine,
    run_worker,
    status_kib,
    table,
)
from eval_throughput import make_checkpoint


def _bare_times(clf, image, rounds: int) -> Dict[str, float]:
    x = clf.inputs([image])
    fwd, fwd_bwd = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with torch.no_grad():
            clf.model(x)
        t1 = time.perf_counter()
        out = clf.model(x)
        out[0, int(out[0].argmax())].backward()
        clf.model.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        fwd_bwd.append(t2 - t1)
    return {"forward": statistics.median(fwd), "forward_backward": statistics.median(fwd_bwd)}


def _analyse_times(board, image_path: str, rounds: int) -> Dict[str, float]:
    first, last = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        t_first = None
        for a in board.analyse(image_path):
            if t_first is None and a.probabilities:
                t_first = time.perf_counter() - t0
        last.append(time.perf_counter() - t0)
        first.append(t_first)
    return {"first": statistics.median(first), "all": statistics.median(last)}


def _bare_worker(refs: Sequence[str], image: str, rounds: int) -> Dict[str, Dict[str, float]]:
    from cxr.models.classifier import CXRClassifier

    return {ref: _bare_times(CXRClassifier.from_pretrained(ref), image, rounds) for ref in refs}


def _board_worker(refs: Sequence[str], image: str, rounds: int) -> Dict[str, object]:
    from cxr.allocator import keep_freed_memory
    from cxr.app.board import ModelBoard

    # as importing cxr.commands does for python app.py (run_worker did already); off through the environment
    keep_freed_memory()
    board = ModelBoard.load(refs)
    calls = {m.ref: 0 for m in board.models}
    for m in board.models:
        m.classifier.model.register_forward_hook(lambda *_, r=m.ref: calls.__setitem__(r, calls[r] + 1))
    list(board.analyse(image))  # warm-up
    for r in calls:
        calls[r] = 0
    list(board.analyse(image))
    forwards = dict(calls)
    single = {m.ref: _analyse_times(ModelBoard([m]), image, rounds) for m in board.models}
    return {"forwards": forwards, "single": single, "all": _analyse_times(board, image, rounds)}


def _floor_app(port: int) -> None:
    """A Gradio app with the real one's inputs and outputs that answers at once (the transport's cost)."""
    import gradio as gr
    import numpy as np

    shown = np.zeros((299, 299), np.uint8)

    def answer(path, method, explain):
        yield ["*done*", shown, {"COVID": 0.25, "Lung_Opacity": 0.25, "Normal": 0.25, "Viral Pneumonia": 0.25}]

    with gr.Blocks() as demo:
        inputs = [gr.File(type="filepath"), gr.Dropdown(["GradCAM"]), gr.Dropdown(["predicted class"])]
        outputs = [gr.Markdown(), gr.Image(type="numpy"), gr.Label()]
        gr.Button().click(answer, inputs, outputs, api_name="analyse")
    demo.queue().launch(server_name="127.0.0.1", server_port=port, quiet=True)


def _client_times(url: str, image: str, rounds: int) -> Tuple[float, float]:
    """Median (first probabilities, all outputs) seconds of ``/analyse`` through ``gradio_client``."""
    from gradio_client import handle_file

    client = answer_client(url)
    firsts, alls = [], []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        job = client.submit(handle_file(image), "GradCAM", "predicted class", api_name="/analyse")
        t_first = None
        while not job.done():
            if t_first is None and job.outputs():
                t_first = time.perf_counter() - t0
            time.sleep(0.002)
        job.result()
        total = time.perf_counter() - t0
        firsts.append(t_first if t_first is not None else total)
        alls.append(total)
    return statistics.median(firsts[1:]), statistics.median(alls[1:])


def _http_times(url: str, image: str, rounds: int) -> Tuple[float, float]:
    """Median (first probabilities, all outputs) seconds of ``/analyse`` through Gradio's HTTP API as
    the page's JavaScript client uses it: upload the file, join the queue, read the event stream."""
    import httpx

    base = url.rstrip("/")
    deps = httpx.get(base + "/config").json()["dependencies"]
    fn_index = next(i for i, d in enumerate(deps) if d.get("api_name") == "analyse")
    firsts, alls = [], []
    with httpx.Client(timeout=120) as http:
        for _ in range(rounds + 1):
            session = uuid.uuid4().hex
            t0 = time.perf_counter()
            with open(image, "rb") as fh:
                uploaded = http.post(
                    base + "/gradio_api/upload", files=[("files", (Path(image).name, fh, "image/png"))]
                )
            file_data = {
                "path": uploaded.json()[0],
                "orig_name": Path(image).name,
                "meta": {"_type": "gradio.FileData"},
            }
            http.post(
                base + "/gradio_api/queue/join",
                json={
                    "data": [file_data, "GradCAM", "predicted class"],
                    "fn_index": fn_index,
                    "session_hash": session,
                    "event_data": None,
                    "trigger_id": None,
                },
            ).raise_for_status()
            t_first = None
            with http.stream("GET", base + "/gradio_api/queue/data", params={"session_hash": session}) as events:
                for line in events.iter_lines():
                    msg = json.loads(line[5:]) if line.startswith("data:") else {}
                    if msg.get("msg") == "process_generating" and t_first is None:
                        t_first = time.perf_counter() - t0
                    if msg.get("msg") == "process_completed":
                        if not msg.get("success", True):
                            raise SystemExit(f"/analyse failed: {msg}")
                        break
            alls.append(time.perf_counter() - t0)
            firsts.append(t_first if t_first is not None else alls[-1])
    return statistics.median(firsts[1:]), statistics.median(alls[1:])


def _start(cmd: List[str], port: int) -> Tuple[subprocess.Popen, float]:
    """Start a server and wait until it answers; returns the process and the seconds it took."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(cmd)} did not start") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--models", default="alexnet,vgg19_bn,resnet50,logreg", help="Comma-separated models.")
    p.add_argument("--image-size", type=int, default=224, help="Checkpoint input side.")
    p.add_argument("--rounds", type=int, default=3, help="Repetitions per timing (median reported).")
    p.add_argument("--requests", type=int, default=500, help="Requests for the memory-growth measurement.")
    p.add_argument(
        "--worker",
        default=None,
        metavar="ARM",
        help="Internal: bare, board (with --refs) or floor-app:PORT, run in this process.",
    )
    p.add_argument("--refs", default=None, help="Internal: the checkpoint folders of a --worker arm.")
    args = p.parse_args()
    image = str(sorted(Path(args.data).glob("COVID/*.png"))[0])
    if args.worker:
        if args.worker.startswith("floor-app:"):
            _floor_app(int(args.worker.split(":")[1]))
            return
        refs = args.refs.split(",")
        fn = _bare_worker if args.worker == "bare" else _board_worker
        print(json.dumps(fn(refs, image, args.rounds)))
        return
    names = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        refs = [str(make_checkpoint(n, args.image_size, Path(tmp))) for n in names]

        # 1-2: in process, each arm in its own
        worker_args = ["--data", args.data, "--rounds", str(args.rounds), "--refs", ",".join(refs)]
        bare = run_worker("app_latency.py", [*worker_args, "--worker", "bare"], keep_defaults_env())
        boards = {
            "ours": run_worker("app_latency.py", [*worker_args, "--worker", "board"]),
            "defaults": run_worker("app_latency.py", [*worker_args, "--worker", "board"], keep_defaults_env()),
        }
        rows = []

        def row(label, f, fb, times, forwards):
            d = times["defaults"]
            o = times["ours"]
            return [
                label,
                f"{1000 * f:.0f}",
                f"{1000 * o['first']:.0f}",
                f"{o['first'] / f:.2f}×",
                f"{d['first'] / f:.2f}×",
                f"{1000 * fb:.0f}",
                f"{1000 * o['all']:.0f}",
                f"{o['all'] / fb:.2f}×",
                f"{d['all'] / fb:.2f}×",
                forwards,
            ]

        for name, ref in zip(names, refs):
            rows.append(
                row(
                    name,
                    bare[ref]["forward"],
                    bare[ref]["forward_backward"],
                    {k: b["single"][ref] for k, b in boards.items()},
                    boards["ours"]["forwards"][ref],
                )
            )
        sum_f = sum(b["forward"] for b in bare.values())
        sum_fb = sum(b["forward_backward"] for b in bare.values())
        rows.append(
            row(
                "all together",
                sum_f,
                sum_fb,
                {k: b["all"] for k, b in boards.items()},
                sum(boards["ours"]["forwards"].values()),
            )
        )

        # 3: the transport's own cost, against a do-nothing app
        port = free_port()
        floor_proc, _ = _start([sys.executable, "bench/app_latency.py", "--worker", f"floor-app:{port}"], port)
        try:
            floor_url = f"http://127.0.0.1:{port}/"
            floor = {
                "gradio_client": _client_times(floor_url, image, args.rounds),
                "HTTP API": _http_times(floor_url, image, args.rounds),
            }
        finally:
            _stop(floor_proc)

        # 3-4: the running app
        port = free_port()
        proc, startup = _start([sys.executable, "app.py", "--models", ",".join(refs), "--port", str(port)], port)
        url = f"http://127.0.0.1:{port}/"
        try:
            app = {
                "gradio_client": _client_times(url, image, args.rounds),
                "HTTP API": _http_times(url, image, args.rounds),
            }
            from gradio_client import handle_file

            client = answer_client(url)
            after_start = status_kib(proc.pid)
            for _ in range(min(20, args.requests)):
                client.predict(handle_file(image), "GradCAM", "predicted class", api_name="/predict")
            warm = status_kib(proc.pid)
            files = sorted(Path(args.data).glob("*/*.png"))
            for i in range(args.requests):
                client.predict(
                    handle_file(str(files[i % len(files)])), "GradCAM", "predicted class", api_name="/predict"
                )
            after = status_kib(proc.pid)
            peak = status_kib(proc.pid, "VmHWM")
        finally:
            _stop(proc)

    transport_rows = []
    for way in ("HTTP API", "gradio_client"):
        (first, total), (floor_first, floor_total) = app[way], floor[way]
        transport_rows.append(
            [
                way,
                f"{1000 * first:.0f}",
                f"{first / sum_f:.2f}×",
                f"{1000 * total:.0f}",
                f"{total / sum_fb:.2f}×",
                f"{1000 * floor_first:.0f}",
                f"{1000 * floor_total:.0f}",
            ]
        )
    print()
    print(f"App latency, {len(names)} models at {args.image_size}px, median of {args.rounds} — {machine()}")
    print()
    print(
        table(
            [
                "model",
                "bare forward ms",
                "first probabilities ms",
                "ratio (target ≤ 1.2×)",
                "ratio, glibc defaults",
                "bare fwd+bwd ms",
                "all heat maps ms",
                "ratio (target ≤ 1.3×)",
                "ratio, glibc defaults",
                "forwards per request",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            [
                "python app.py, /analyse through",
                "first probabilities ms",
                "/ bare forwards (target ≤ 1.2×)",
                "all heat maps ms",
                "/ bare fwd+bwd (target ≤ 1.3×)",
                "do-nothing app: first ms",
                "do-nothing app: all ms",
            ],
            transport_rows,
        )
    )
    print()
    print(
        table(
            ["python app.py", "value"],
            [
                ["startup until it answers", f"{startup:.1f} s (target ≤ 15 s)"],
                ["resident memory after the latency requests", f"{after_start / 1024:.0f} MiB"],
                ["peak resident memory", f"{peak / 1024:.0f} MiB"],
                [
                    f"growth over {args.requests} requests (after 20 warm-up)",
                    f"{100 * (after - warm) / warm:+.1f}% ({warm / 1024:.0f} → {after / 1024:.0f} MiB; target < 5%)",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
