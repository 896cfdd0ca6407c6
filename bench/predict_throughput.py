"""``python -m cxr.predict`` against ``python -m cxr.eval`` on the same films, as a user runs them.

Both commands run end to end in fresh processes (imports, model loading, decoding, batched forwards, the files
they write) on every film of ``--data`` with the same model (``--model`` at ``--image-size``, random weights:
speed does not depend on them) and batch size: ``cxr.eval`` with a fresh pixel cache (it decodes every film, as
``cxr.predict`` always does) and with the cache it just filled, and ``cxr.predict`` (its CSV only). Rounds rotate
the order; the table gives each arm's median seconds and its ratio to ``cxr.eval`` with a fresh cache. Target:
``cxr.predict`` no slower than 1.1× that.

    python bench/predict_throughput.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from common import DEFAULT_DATA, REPO, machine, rotated, table
from eval_throughput import make_checkpoint

ARMS = ("cxr.eval, fresh pixel cache", "cxr.eval, warm pixel cache", "cxr.predict")
TARGET = 1.1


def _command(arm: str, model: Path, data: str, batch: int, work: Path, round_index: int) -> List[str]:
    if arm == "cxr.predict":
        out = ["--output", str(work / f"predict-{round_index}.csv")]
        return [sys.executable, "-m", "cxr.predict", data, "--model", str(model), "--batch-size", str(batch), *out]
    cache = work / ("cache-warm" if "warm" in arm else f"cache-fresh-{round_index}")
    return [
        sys.executable,
        "-m",
        "cxr.eval",
        "--model",
        str(model),
        "--data",
        data,
        "--output-dir",
        str(work / f"eval-{round_index}-{'warm' if 'warm' in arm else 'fresh'}"),
        "--batch-size",
        str(batch),
        "--cache-dir",
        str(cache),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder of films (default: the sample).")
    p.add_argument("--model", default="tf_efficientnet_lite0", help="The model (random weights).")
    p.add_argument("--image-size", type=int, default=224, help="The model's input side.")
    p.add_argument("--batch-size", type=int, default=32, help="Films per forward, both commands.")
    p.add_argument("--rounds", type=int, default=3, help="Timed runs of each command (median reported).")
    args = p.parse_args()
    films = sum(1 for f in Path(args.data).rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
    times: Dict[str, List[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_checkpoint(args.model, args.image_size, work)
        warm = _command(ARMS[0], model, args.data, args.batch_size, work, -1)
        warm[warm.index("--cache-dir") + 1] = str(work / "cache-warm")
        subprocess.run(warm, cwd=REPO, check=True, capture_output=True)  # fills the warm cache, untimed
        for r in range(args.rounds):
            for arm in rotated(ARMS, r):
                cmd = _command(arm, model, args.data, args.batch_size, work, r)
                start = time.perf_counter()
                done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{arm} failed: {done.stderr[-2000:]}")
                times[arm].append(time.perf_counter() - start)
                print(f"  round {r + 1}: {arm} {times[arm][-1]:.1f} s", file=sys.stderr, flush=True)
    base = statistics.median(times[ARMS[0]])
    rows = []
    for arm in ARMS:
        median = statistics.median(times[arm])
        mark = f" {'✓' if median / base <= TARGET else '✗'} (≤ {TARGET})" if arm == "cxr.predict" else ""
        rows.append([arm, f"{median:.1f}", f"{films / median:.1f}", f"{median / base:.2f}{mark}"])
    print(
        f"\n{machine()}; {films} films of {args.data}; {args.model} at {args.image_size} px, batch "
        f"{args.batch_size}; median of {args.rounds} runs per command, each a fresh process\n"
    )
    print(table(["command", "seconds", "films/s", "× cxr.eval, fresh cache"], rows))


if __name__ == "__main__":
    main()
