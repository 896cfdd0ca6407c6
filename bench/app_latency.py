"""App latency, startup and memory: the app's own prediction path and gradio_client against the
running app, beside the bare models' forward (and forward+backward, what a CAM needs) timed in the
same run.

Models: the study-era four (alexnet, vgg19_bn, resnet50, logreg; random weights — timing does not
depend on them) saved as cxr checkpoints at ``--image-size``. Reported:

1. per model and for all together: time to first probabilities and to all heat maps through
   :meth:`cxr.demo.ModelBoard.analyse`, against the sum of bare forwards / forward+backwards;
2. forwards per model per request (hooks count them; the target is 1);
3. the same two times through ``gradio_client`` against ``python app.py``;
4. startup time of ``python app.py`` until it answers, peak resident memory, and its growth over
   ``--requests`` requests.

    python bench/app_latency.py --image-size 224 --requests 500
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict

import torch

from common import DEFAULT_DATA, REPO, machine, table
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


def _rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from cxr.demo import ModelBoard

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--models", default="alexnet,vgg19_bn,resnet50,logreg", help="Comma-separated models.")
    p.add_argument("--image-size", type=int, default=224, help="Checkpoint input side.")
    p.add_argument("--rounds", type=int, default=3, help="Repetitions per timing (median reported).")
    p.add_argument("--requests", type=int, default=500, help="Requests for the memory-growth measurement.")
    args = p.parse_args()
    image = str(sorted(Path(args.data).glob("COVID/*.png"))[0])
    names = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        refs = [str(make_checkpoint(n, args.image_size, Path(tmp))) for n in names]

        # 1-2: in process
        board = ModelBoard.load(refs)
        bare = {m.ref: _bare_times(m.classifier, image, args.rounds) for m in board.models}
        calls = {m.ref: 0 for m in board.models}
        for m in board.models:
            m.classifier.model.register_forward_hook(lambda *_, r=m.ref: calls.__setitem__(r, calls[r] + 1))
        list(board.analyse(image))  # warm-up
        for r in calls:
            calls[r] = 0
        list(board.analyse(image))
        forwards = dict(calls)
        rows = []
        for name, m in zip(names, board.models):
            single = ModelBoard([m])
            t = _analyse_times(single, image, args.rounds)
            b = bare[m.ref]
            rows.append([name, f"{1000 * b['forward']:.0f}", f"{1000 * t['first']:.0f}", f"{t['first'] / b['forward']:.2f}×",
                         f"{1000 * b['forward_backward']:.0f}", f"{1000 * t['all']:.0f}",
                         f"{t['all'] / b['forward_backward']:.2f}×", forwards[m.ref]])
        t = _analyse_times(board, image, args.rounds)
        sum_f = sum(b["forward"] for b in bare.values())
        sum_fb = sum(b["forward_backward"] for b in bare.values())
        rows.append(["all together", f"{1000 * sum_f:.0f}", f"{1000 * t['first']:.0f}", f"{t['first'] / sum_f:.2f}×",
                     f"{1000 * sum_fb:.0f}", f"{1000 * t['all']:.0f}", f"{t['all'] / sum_fb:.2f}×",
                     sum(forwards.values())])
        del board

        # 3-4: the running app
        port = _free_port()
        t_start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py", "--models", ",".join(refs), "--port", str(port)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        url = f"http://127.0.0.1:{port}/"
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("the app did not start")
                time.sleep(0.1)
        startup = time.perf_counter() - t_start
        try:
            from gradio_client import Client, handle_file

            client = Client(url, verbose=False)
            firsts, alls = [], []
            for _ in range(args.rounds + 1):
                t0 = time.perf_counter()
                job = client.submit(handle_file(image), "GradCAM", "predicted class", api_name="/analyse")
                t_first = None
                while not job.done():
                    outs = job.outputs()
                    if t_first is None and any(isinstance(v, dict) and v.get("__type__") != "update"
                                               for o in outs for v in o[2:2 + len(names)]):
                        t_first = time.perf_counter() - t0
                    time.sleep(0.005)
                job.result()
                total = time.perf_counter() - t0
                firsts.append(t_first if t_first is not None else total)
                alls.append(total)
            client_row = [f"{1000 * statistics.median(firsts[1:]):.0f}", f"{1000 * statistics.median(alls[1:]):.0f}"]
            after_start = _rss_kib(proc.pid)
            for i in range(min(20, args.requests)):
                client.predict(handle_file(image), "GradCAM", "predicted class", api_name="/predict")
            warm = _rss_kib(proc.pid)
            files = sorted(Path(args.data).glob("*/*.png"))
            for i in range(args.requests):
                client.predict(handle_file(str(files[i % len(files)])), "GradCAM", "predicted class", api_name="/predict")
            after = _rss_kib(proc.pid)
            peak = _rss_kib(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print()
    print(f"App latency, {len(names)} models at {args.image_size}px, median of {args.rounds} — {machine()}")
    print()
    print(table(["model", "bare forward ms", "first probabilities ms", "ratio (target ≤ 1.2×)",
                 "bare fwd+bwd ms", "all heat maps ms", "ratio (target ≤ 1.3×)", "forwards per request"], rows))
    print()
    print(table(["through gradio_client", "first probabilities ms", "all heat maps ms"], [["/analyse (streaming)", *client_row]]))
    print()
    print(table(["python app.py", "value"], [
        ["startup until it answers", f"{startup:.1f} s (target ≤ 15 s)"],
        ["resident memory after start", f"{after_start / 1024:.0f} MiB"],
        ["peak resident memory", f"{peak / 1024:.0f} MiB"],
        [f"growth over {args.requests} requests (after 20 warm-up)", f"{100 * (after - warm) / warm:+.1f}% "
                                                                     f"({warm / 1024:.0f} → {after / 1024:.0f} MiB; target < 5%)"],
    ]))


if __name__ == "__main__":
    main()
