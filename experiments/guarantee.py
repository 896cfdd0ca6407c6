"""Does the operating point's finite-sample guarantee hold, and what does it cost? Two measurements.

1. **Over random splits** of held-out predictions (the bundled out-of-fold predictions of the default recipe's 5-fold
   cross-validation on the sample: 600 films, 300 of them COVID or Viral Pneumonia): each split takes a stratified
   half of the films to choose the threshold on and judges it on the other half. For each target and guarantee:
   the realised share of critical films called Normal on the judging half (mean over splits, and the share of
   splits in which it exceeds the target) and the Normal films kept Normal there.
2. **A site recalibrated** with ``cxr.calibrate``: with each fold model of a ``python -m cxr.cv`` run, a stratified
   half of that fold's own test films (films the model never trained on) stands in for a site's labelled sample;
   the point set there is judged on the other half, beside the model's original point. Then ``cxr.calibrate`` on
   the external dev set (Normal films only): it fits nothing there (no critical film, one class) and reports the
   Normal-kept rate of the original point.

    python experiments/guarantee.py --cv-dir runs/cv-default --data ../shared/data/cxr-sample \\
        --external ../shared/data/cxr-external-dev --splits 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import DEFAULT_DATA, REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.labels import DATABASE  # noqa: E402
from cxr.metrics.operating_point import choose_operating_point, operating_rates  # noqa: E402
from cxr.metrics.stats import softmax_with_temperature  # noqa: E402
from cxr.run_folder import CVFolder, read_predictions  # noqa: E402
from cxr.training.held_out import BUNDLED  # noqa: E402

TARGETS = (0.01, 0.02, 0.05, 0.10)


def _halves(labels: np.ndarray, rng: np.random.Generator):
    a, b = [], []
    for k in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == k))
        a.extend(rows[: len(rows) // 2])
        b.extend(rows[len(rows) // 2 :])
    return np.array(a), np.array(b)


def over_splits(splits: int, seed: int) -> str:
    bundle = json.loads(BUNDLED.read_text())
    y = np.asarray(bundle["labels"])
    p = softmax_with_temperature(np.asarray(bundle["logits"]), 1.0)
    rng = np.random.default_rng(seed)
    draws = [_halves(y, rng) for _ in range(splits)]
    rows: List[List[object]] = []
    for kind, conf in (("expected", None), ("confidence", 0.95)):
        for target in TARGETS:
            missed, kept, met = [], [], 0
            for cal, test in draws:
                op = choose_operating_point(y[cal], p[cal], DATABASE, target, "half", kind, conf or 0.95)
                r = operating_rates(y[test], p[test], op.normal_threshold, DATABASE)
                missed.append(r["missed_rate"])
                kept.append(r["normal_kept_rate"])
                met += op.guarantee.met
            missed_a = np.array(missed)
            rows.append(
                [
                    kind if conf is None else f"{kind} ({conf:.0%})",
                    f"{target:.0%}",
                    f"{met}/{splits}",
                    f"{missed_a.mean():.2%}",
                    f"{(missed_a > target).mean():.1%}",
                    f"{np.mean(kept):.1%}",
                ]
            )
    header = [
        "guarantee",
        "target",
        "splits where the target could be guaranteed",
        "realised rate, mean",
        "splits above the target",
        "Normal kept, mean",
    ]
    return table(header, rows)


def _site_folder(root: Path, data: Path, files: List[str]) -> Path:
    for name in files:
        cls, base = name.split("/", 1)
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / base).symlink_to((data / cls / base).resolve())
    return root


def site(cv_dir: Path, data: Path, external: Path, seed: int) -> str:
    from cxr.models.classifier import CXRClassifier
    from cxr.training.site_calibration import recalibrate

    cv, rng, rows = CVFolder(cv_dir), np.random.default_rng(seed), []
    k = 0
    while cv.fold(k).model_dir.is_dir():
        run = cv.fold(k)
        pred = read_predictions(run.predictions("test"))
        site_rows, judge_rows = _halves(pred.y, rng)
        with tempfile.TemporaryDirectory() as tmp:
            folder = _site_folder(Path(tmp) / "site", data, [pred.files[i] for i in site_rows])
            done = recalibrate(str(run.model_dir), str(folder), Path(tmp) / "out", temperature="keep")
            new = CXRClassifier.from_pretrained(Path(tmp) / "out" / "model")
        old = CXRClassifier.from_pretrained(run.model_dir)
        y, probs = pred.y[judge_rows], pred.probs[judge_rows]
        for name, clf in (("original", old), ("recalibrated", new)):
            r = operating_rates(y, probs, clf.operating_point.normal_threshold, DATABASE)
            g = clf.operating_point.guarantee
            rows.append(
                [
                    k,
                    name,
                    f"{clf.operating_point.normal_threshold:.3f}",
                    "–" if g is None else f"{g.kind} ≤ {g.bound:.1%} on {g.critical_films}",
                    f"{r['critical_called_normal']}/{r['critical']}",
                    f"{r['normal_kept']}/{r['normal']} ({r['normal_kept_rate']:.0%})",
                ]
            )
        k += 1
    out = table(
        [
            "fold",
            "point",
            "threshold",
            "guarantee where set",
            "critical called Normal (judging half)",
            "Normal kept (judging half)",
        ],
        rows,
    )
    with tempfile.TemporaryDirectory() as tmp:
        done = recalibrate(str(cv.fold(0).model_dir), str(external), Path(tmp) / "out")
        rec = done.record
        out += (
            f"\n\nExternal dev set with fold 0's model: {rec['films']} films of {', '.join(rec['classes_present'])}; "
            f"temperature refitted: {rec['temperature_refitted']}; guarantee re-established: "
            f"{rec['guarantee_re_established']}; Normal kept by the original point there: "
            f"{rec['negative_kept_rate']:.1%}. {rec['note']}."
        )
        shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cv-dir", type=Path, help="A finished python -m cxr.cv run of the default recipe (part 2).")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="The sample the CV ran on (default: %(default)s).")
    ap.add_argument("--external", type=Path, help="The external dev set (Normal films; part 2).")
    ap.add_argument("--splits", type=int, default=1000, help="Random splits for part 1 (default: %(default)s).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the splits (default: %(default)s).")
    args = ap.parse_args()
    print(f"{machine()}\n")
    print("Over random splits of the bundled out-of-fold predictions:\n")
    print(over_splits(args.splits, args.seed))
    if args.cv_dir:
        print("\nA site recalibrated (half of each fold's test films), judged on the other half:\n")
        print(site(args.cv_dir, args.data, args.external, args.seed))


if __name__ == "__main__":
    main()
