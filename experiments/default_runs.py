"""The default run, seed by seed: how long it takes, what it chose, and what it does on its test films and on
films from elsewhere.

For each ``--seed``, the default training command (docs/training.md) (``accelerate launch --num_processes 1
train_accelerate.py --model tf_efficientnet_lite0 --image-size 224 --data DATA --output-dir ROOT/seed-S --seed
S``, plus ``--extra`` flags) is run and timed from launch to exit, unless ``ROOT/seed-S`` already holds a finished
run (its time is then read from ``ROOT/times.json``). Then one row per run from its ``metrics.json``: the carried
temperature and the Normal threshold, its own 60 test films (COVID + Viral Pneumonia called Normal by the
decision and by argmax, Normal films kept, accuracy) — and, with ``--external``, the outside Normal films called
Normal by argmax and by the decision, each with a bootstrap 95% interval over films. Nothing is fitted or chosen
on the outside films; they are scored by ``CXRClassifier`` as ``cxr.predict`` scores them.

    python experiments/default_runs.py --seed 1 --seed 2 --seed 3 --root runs/default-runs \\
        --external ../shared/data/cxr-external-dev [--extra --clahe]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import DEFAULT_DATA, REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.data.inputs import find_films  # noqa: E402
from cxr.labels import NORMAL  # noqa: E402
from cxr.metrics.stats import stratified_bootstrap_ci  # noqa: E402
from cxr.models.classifier import CXRClassifier  # noqa: E402
from cxr.run_folder import RunFolder, read_json  # noqa: E402


def _train(run_dir: Path, data: str, seed: int, extra: List[str]) -> float:
    cmd = ["accelerate", "launch", "--num_processes", "1", "train_accelerate.py", "--model", "tf_efficientnet_lite0"]
    cmd += ["--image-size", "224", "--data", data, "--output-dir", str(run_dir), "--seed", str(seed), *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


def _share(hits: np.ndarray) -> str:
    v, lo, hi = stratified_bootstrap_ci(np.zeros_like(hits), hits, lambda _y, h: float(np.mean(h)))
    return f"{int(hits.sum())}/{len(hits)} ({100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}])"


def _outside(run: RunFolder, films: List[Path]) -> List[str]:
    clf = CXRClassifier.from_pretrained(run.model_dir)
    probs = np.concatenate([clf.predict_proba(films[i : i + 32]) for i in range(0, len(films), 32)])
    normal = clf.label_names.index(NORMAL)
    by_argmax = (probs.argmax(1) == normal).astype(np.int64)
    by_decision = (clf.decide(probs) == normal).astype(np.int64)
    return [_share(by_argmax), _share(by_decision)]


def _row(seed: int, run: RunFolder, seconds: float) -> List[str]:
    m = read_json(run.metrics)
    d, test = m["decision"], m["test"]
    return [
        str(seed),
        f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s" if seconds else "—",
        f"{(m.get('calibration') or {}).get('temperature') or 1.0:.2f}",
        f"{d['normal_threshold']:.3f}",
        f"{d['rates']['critical_called_normal']}/{d['rates']['critical']} (argmax {test['critical_to_normal']})",
        f"{d['rates']['normal_kept']}/{d['rates']['normal']}",
        f"{100 * d['accuracy']:.2f}% ({100 * test['accuracy']:.2f}%)",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, action="append", required=True, help="A seed to run (repeatable).")
    p.add_argument("--root", type=Path, required=True, help="Where the runs go: ROOT/seed-S, times in times.json.")
    p.add_argument("--data", default=DEFAULT_DATA, help="The training data (default: the sample).")
    p.add_argument("--external", type=Path, help="A folder of Normal films from elsewhere, scored only.")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="Training flags added to each run (last).")
    args = p.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    times_file = args.root / "times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    outside = find_films([str(args.external)]).files if args.external else []
    rows = []
    for seed in args.seed:
        run = RunFolder(args.root / f"seed-{seed}")
        if not run.is_finished():
            times[str(seed)] = _train(run.root, args.data, seed, args.extra)
            times_file.write_text(json.dumps(times, indent=1))
        row = _row(seed, run, times.get(str(seed), 0.0))
        rows.append(row + (_outside(run, outside) if outside else []))
    header = ["seed", "run time", "temperature", "Normal threshold", "test: COVID + VP called Normal"]
    header += ["test: Normal kept", "test accuracy, decision (argmax)"]
    if outside:
        header += [f"outside Normal called Normal, argmax ({len(outside)} films)", "by the decision"]
    print(f"\n{machine()}; runs in {args.root}; extra flags: {' '.join(args.extra) or 'none'}\n")
    print(table(header, rows))


if __name__ == "__main__":
    main()
