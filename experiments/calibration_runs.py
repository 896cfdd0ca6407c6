"""Is a trained model calibrated? Its test ECE set against the ECE a calibrated model would show there by chance.

A run's test split holds 60 films of the sample: too few for an ECE to say much (a perfectly calibrated model with
confident probabilities shows about 0.05 on 60 films by chance alone). For each run folder given, and for all of
their test films pooled (each run's own split, so its own test films), this script compares the temperatures a
run could carry — none (T = 1), the one the run saved (``--choose-on auto``: fitted on the recipe's carried
out-of-fold predictions), and one fitted on the run's own validation part (smoothed by the rule of succession
when that part holds no error, as ``cxr.training.finish`` does) — by ECE and NLL on the test films, each ECE
beside the median and 95th percentile a calibrated model would show on those films
(:func:`cxr.metrics.stats.ece_if_calibrated`). Logits are recovered from the saved probabilities (``T log p``).

    python experiments/calibration_runs.py --run RUN1 --run RUN2 --run RUN3 --chance-at 60 --chance-at 400

``--chance-at N`` also prints the chance band on N films drawn from the default recipe's 600 out-of-fold
predictions (shipped with cxr, calibrated on themselves): what a test set of that size can show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.metrics.stats import (  # noqa: E402
    ece_if_calibrated,
    expected_calibration_error,
    negative_log_likelihood,
    softmax_with_temperature,
)
from cxr.run_folder import RunFolder, read_json  # noqa: E402
from cxr.training.finish import fit_held_out_temperature  # noqa: E402
from cxr.training.held_out import from_predictions  # noqa: E402

SOURCES = ("none (T = 1)", "saved by the run", "the run's own validation part")


def _temperatures(run: RunFolder) -> Tuple[Dict[str, float], Tuple[np.ndarray, np.ndarray]]:
    calibration = read_json(run.metrics).get("calibration") or {}
    saved = float(calibration.get("temperature") or 1.0)
    validation = from_predictions(run.predictions("validation"), saved, "its validation part")
    test = from_predictions(run.predictions("test"), saved, "its test part")
    own = fit_held_out_temperature(validation)[0]
    return dict(zip(SOURCES, (1.0, saved, own))), (test.labels, test.logits)


def _row(name: str, source: str, t: str, y: np.ndarray, probs: np.ndarray) -> List[str]:
    chance = ece_if_calibrated(probs)
    ece = expected_calibration_error(y, probs)
    flag = "under" if ece <= chance["p95"] else "**over**"
    return [
        name,
        source,
        t,
        str(len(y)),
        f"{ece:.3f}",
        f"{chance['median']:.3f} / {chance['p95']:.3f} ({flag})",
        f"{negative_log_likelihood(y, probs):.3f}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run", required=True, action="append", type=Path, help="A training run's --output-dir (repeatable)."
    )
    p.add_argument(
        "--chance-at",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="Also print the chance band on N films drawn from the shipped out-of-fold predictions (repeatable; "
        "1 to 600).",
    )
    args = p.parse_args()
    if any(not 1 <= n <= 600 for n in args.chance_at):
        p.error("--chance-at takes 1 to 600 films")
    rows, pooled = [], {s: ([], []) for s in SOURCES}
    for path in args.run:
        run = RunFolder(path)
        if not run.metrics.is_file():
            raise SystemExit(f"{path}: not a finished training run (no {run.metrics.name})")
        temps, (y, z) = _temperatures(run)
        for source, t in temps.items():
            probs = softmax_with_temperature(z, t)
            pooled[source][0].append(y)
            pooled[source][1].append(probs)
            rows.append(_row(path.name, source, f"{t:.2f}", y, probs))
    if len(args.run) > 1:
        for source, (ys, ps) in pooled.items():
            rows.append(_row(f"all {len(args.run)} pooled", source, "—", np.concatenate(ys), np.concatenate(ps)))
    print(f"\n{machine()}\n")
    print(
        "Test-split calibration by temperature source (ECE 15 bins; 'by chance': what a calibrated model shows on "
        "those films, median / 95th percentile of 1000 consistency resamples):\n"
    )
    print(table(["run", "temperature from", "T", "films", "ECE", "by chance (median / 95%)", "NLL"], rows))
    if args.chance_at:
        print("\nThe chance band by test-set size (films drawn from the shipped out-of-fold predictions, 5 draws):\n")
        print(table(["films", "by chance: median", "by chance: 95%"], _chance_by_size(args.chance_at)))


def _chance_by_size(sizes: List[int]) -> List[List[str]]:
    import json

    from cxr.metrics.stats import fit_temperature_to_logits
    from cxr.training.held_out import BUNDLED

    bundle = json.loads(BUNDLED.read_text())
    y, z = np.asarray(bundle["labels"]), np.asarray(bundle["logits"], dtype=np.float64)
    probs = softmax_with_temperature(z, fit_temperature_to_logits(y, z))
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        bands = [ece_if_calibrated(probs[rng.choice(len(probs), n, replace=False)], draws=300) for _ in range(5)]
        med, p95 = [b["median"] for b in bands], [b["p95"] for b in bands]
        rows.append([str(n), f"{min(med):.3f}–{max(med):.3f}", f"{min(p95):.3f}–{max(p95):.3f}"])
    return rows


if __name__ == "__main__":
    main()
