"""Where a model's temperature and operating point should come from: measured on a cross-validation's folds.

A training run holds out only its validation part (about 53–60 films of the sample, about half of them COVID or
Viral Pneumonia) to fit a temperature and choose the threshold "Normal only when P(Normal) ≥ t". This script takes
the folder of a ``python -m cxr.cv`` run and, for each fold, compares the sources a run could use, judged on the
fold's test part — films neither source saw:

- temperature: the fold's own (fitted on its validation part; 1 when that part held no error), the same fit with
  the targets smoothed by the rule of succession when that part holds no error (one error's worth of doubt in
  n+2, so a part without error still gives a finite temperature; ``cxr.training.finish``), and the temperature fitted on the other folds' out-of-fold predictions
  (cross-fitted: what carrying the recipe's cross-validation into a model would give);
- threshold, for each ``--max-missed-rate``: chosen on the fold's validation part, or on the other folds'
  out-of-fold predictions (cross-fitted), each on probabilities calibrated by the same source.

Printed: ECE over all out-of-fold films for each temperature source (with a bootstrap interval), and for each
threshold source the COVID + Viral Pneumonia films called Normal and the Normal films kept Normal over all folds'
test parts, against the target. Logits are recovered from each fold's calibrated predictions (``T log p``; the
softmax does not change when a constant is added).

    python experiments/held_out_sources.py --cv-dir runs/cv-default
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.labels import CLASS_NAMES, DATABASE  # noqa: E402
from cxr.metrics.operating_point import choose_operating_point, operating_rates  # noqa: E402
from cxr.metrics.stats import (  # noqa: E402
    expected_calibration_error,
    fit_temperature_to_logits,  # noqa: E402
    softmax_with_temperature,
)
from cxr.run_folder import RunFolder, read_json  # noqa: E402
from cxr.training.finish import fit_held_out_temperature  # noqa: E402
from cxr.training.held_out import from_logits, from_predictions  # noqa: E402

Part = Tuple[np.ndarray, np.ndarray]  # labels, logits


def _part(held) -> Part:
    return held.labels, held.logits


def _folds(cv_dir: Path) -> List[Dict[str, Part]]:
    folds = []
    k = 0
    while (cv_dir / f"fold-{k}").is_dir():
        run = RunFolder(cv_dir / f"fold-{k}")
        t = float((read_json(run.metrics).get("calibration") or {}).get("temperature") or 1.0)
        folds.append(
            {
                "validation": _part(from_predictions(run.predictions("validation"), t, "validation")),
                "test": _part(from_predictions(run.predictions("test"), t, "test")),
                "own_t": t,
            }
        )
        k += 1
    if len(folds) < 2:
        raise SystemExit(f"{cv_dir}: no fold-K folders of a python -m cxr.cv run")
    return folds


def _temperatures(folds: List[Dict[str, Part]], k: int) -> Dict[str, float]:
    yv, zv = folds[k]["validation"]
    others = [f["test"] for j, f in enumerate(folds) if j != k]
    yo, zo = np.concatenate([o[0] for o in others]), np.concatenate([o[1] for o in others])
    return {
        "the fold's validation part (today: 1 when it holds no error)": folds[k]["own_t"],
        "validation, smoothed by the rule of succession when it holds no error": fit_held_out_temperature(
            from_logits(yv, zv, "validation", CLASS_NAMES)
        )[0],
        "the other folds' out-of-fold predictions (cross-fitted)": fit_temperature_to_logits(yo, zo),
    }


def _bootstrap_ece(y: np.ndarray, p: np.ndarray, n: int = 1000, seed: int = 0) -> Tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(y[i], p[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(n))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cv-dir", required=True, type=Path, help="The --output-dir of a python -m cxr.cv run.")
    p.add_argument(
        "--max-missed-rate",
        type=float,
        action="append",
        default=None,
        help="Target share of COVID + Viral Pneumonia films called Normal (repeatable; default: 0.01 and 0.02).",
    )
    args = p.parse_args()
    rates = args.max_missed_rate or [0.01, 0.02]
    folds = _folds(args.cv_dir)
    temps = [_temperatures(folds, k) for k in range(len(folds))]
    y_all = np.concatenate([f["test"][0] for f in folds])
    t_rows, calibrated = [], {}
    for source in temps[0]:
        probs = np.concatenate([softmax_with_temperature(f["test"][1], t[source]) for f, t in zip(folds, temps)])
        calibrated[source] = probs
        lo, hi = _bootstrap_ece(y_all, probs)
        per_fold = ", ".join(f"{t[source]:.2f}" for t in temps)
        t_rows.append([source, per_fold, f"{expected_calibration_error(y_all, probs):.3f} [{lo:.3f}, {hi:.3f}]"])
    raw = np.concatenate([softmax_with_temperature(f["test"][1], 1.0) for f in folds])
    t_rows.append(["none (T = 1)", "—", f"{expected_calibration_error(y_all, raw):.3f}"])
    op_rows = []
    for rate in rates:
        for t_source in (
            "the fold's validation part (today: 1 when it holds no error)",
            "the other folds' out-of-fold predictions (cross-fitted)",
        ):
            for where in ("the fold's validation part", "the other folds' out-of-fold predictions"):
                thresholds, pooled = [], []
                for k, f in enumerate(folds):
                    t = temps[k][t_source]
                    if where.startswith("the fold's"):
                        y, z = f["validation"]
                    else:
                        parts = [g["test"] for j, g in enumerate(folds) if j != k]
                        y, z = np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
                    thresholds.append(
                        choose_operating_point(
                            y, softmax_with_temperature(z, t), DATABASE, rate, where
                        ).normal_threshold
                    )
                    yt, zt = f["test"]
                    pooled.append((yt, softmax_with_temperature(zt, t), thresholds[-1]))
                missed = sum(operating_rates(y, q, th, DATABASE)["critical_called_normal"] for y, q, th in pooled)
                critical = sum(operating_rates(y, q, th, DATABASE)["critical"] for y, q, th in pooled)
                kept = sum(operating_rates(y, q, th, DATABASE)["normal_kept"] for y, q, th in pooled)
                normal = sum(operating_rates(y, q, th, DATABASE)["normal"] for y, q, th in pooled)
                ok = missed <= math.floor(rate * critical + 1e-9)
                op_rows.append(
                    [
                        f"{rate:.0%}",
                        where,
                        t_source.split(" (")[0],
                        ", ".join(f"{th:.3f}" for th in thresholds),
                        f"{missed}/{critical} ({missed / critical:.1%}) {'✓' if ok else '✗'}",
                        f"{kept}/{normal} ({kept / normal:.1%})",
                    ]
                )
    argmax_missed = int(
        sum(
            ((q.argmax(1) == CLASS_NAMES.index("Normal")) & np.isin(y, [0, 3])).sum()
            for y, q in [(y_all, calibrated[next(iter(calibrated))])]
        )
    )
    print(f"\n{machine()}; {args.cv_dir}: {len(folds)} folds, {len(y_all)} out-of-fold films\n")
    print("Temperature, judged on every fold's test part (ECE over all out-of-fold films, bootstrap 95% interval):\n")
    print(table(["fitted on", "temperature per fold", "ECE [95% CI]"], t_rows))
    print(f"\nOperating point, judged on every fold's test part (argmax calls {argmax_missed} of them Normal):\n")
    print(
        table(
            [
                "target",
                "threshold chosen on",
                "temperature from",
                "threshold per fold",
                "COVID + VP called Normal",
                "Normal kept Normal",
            ],
            op_rows,
        )
    )


if __name__ == "__main__":
    main()
