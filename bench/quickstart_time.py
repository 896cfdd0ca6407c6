"""How long ``python app.py --quickstart DATA`` takes on a fresh clone, from the command until the app answers.

Clones this repository's committed HEAD into a temporary folder (no ``runs/``), gives the app an empty pixel
cache (``CXR_CACHE_DIR``) and Gradio cache, starts ``python app.py --quickstart DATA`` there and times, from the
command's start: each quick-start model's training start, the page being served, and the first ``/classify``
answer with every quick-start model's probabilities (an upload of a sample film). The target of the README's
quick start is an answer within 2 minutes on 2 cores.

    python bench/quickstart_time.py                 # on the sample
    python bench/quickstart_time.py --repeats 2     # twice, each from its own fresh clone

Research use only — not for diagnosis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from app_soak import PageClient
from common import DEFAULT_DATA, REPO, free_port, machine, table

#: Lines of the app's log that mark a phase, and the phase's name in the table.
PHASES = {
    "training quick-start model 1 of": "first model's training starts",
    "training quick-start model 2 of": "second model's training starts",
    "Running on local URL": "page served",
}


def time_once(data: str, timeout: float) -> Dict[str, Optional[float]]:
    """One fresh clone's run: seconds from the command's start to each phase (``None``: not reached)."""
    work = Path(tempfile.mkdtemp(prefix="cxr-quickstart-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "CXR_APP_MODELS"},
        "CXR_CACHE_DIR": str(work / "pixels"),
        "GRADIO_TEMP_DIR": str(work / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    cmd = [sys.executable, "app.py", "--quickstart", str(Path(data).resolve()), "--port", str(port)]
    seen: Dict[str, Optional[float]] = {name: None for name in [*PHASES.values(), "first answer, both models"]}
    log_path = work / "app.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read() -> None:
        with log_path.open("w") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                for mark, name in PHASES.items():
                    if mark in line and seen[name] is None:
                        seen[name] = time.monotonic() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    film = sorted((Path(data) / "COVID").glob("*.png"))[0]
    try:
        while seen["page served"] is None:
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise SystemExit(f"the app did not start: see {log_path}")
            time.sleep(0.2)
        client = PageClient(f"http://127.0.0.1:{port}/")
        info = client.call("classify", [client.upload(film)])[0]
        seen["first answer, both models"] = time.monotonic() - t0
        answered = [m for m, entry in info.get("models", {}).items() if entry.get("probabilities")]
        if info.get("error") or len(answered) < 2:
            raise SystemExit(f"the first answer is not two models' probabilities: {str(info)[:300]}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    shutil.rmtree(work, ignore_errors=True)  # kept when the run failed: its app.log says why
    return seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: $CXR_SAMPLE_DIR).")
    p.add_argument("--repeats", type=int, default=1, help="Fresh clones timed one after another.")
    p.add_argument("--timeout", type=float, default=600, help="Seconds a run may take before it counts as failed.")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if not Path(args.data).is_dir():
        p.error(f"no data folder {args.data}")
    runs: List[Dict[str, Optional[float]]] = []
    for i in range(args.repeats):
        print(f"run {i + 1} of {args.repeats}: a fresh clone of {REPO}", file=sys.stderr, flush=True)
        runs.append(time_once(args.data, args.timeout))
    names = list(runs[0])
    rows = [[name, *(f"{r[name]:.1f}" if r[name] is not None else "—" for r in runs)] for name in names]
    print(f"`python app.py --quickstart {args.data}` from a fresh clone, empty caches; {machine()}")
    print()
    print(table(["seconds from the command to", *(f"run {i + 1}" for i in range(len(runs)))], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
