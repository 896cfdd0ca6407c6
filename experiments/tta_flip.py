"""Test-time flip averaging, judged by the two instruments a recipe change needs: out-of-fold films of the sample
and the external dev set.

Training flips films horizontally half the time, so a model has seen both orientations; averaging the logits of a
film and its mirror image is a candidate for films from elsewhere. With the fold models of a
``python -m cxr.cv`` run: each fold's test films (the 600 out-of-fold films together) and the outside films
(each fold model scores all of them), with and without flip averaging, each model's saved temperature applied.
Printed: out-of-fold accuracy and COVID recall with stratified bootstrap 95% intervals, COVID + Viral Pneumonia
called Normal, and the outside Normal films called Normal by argmax (pooled over the fold models, with a bootstrap
interval over films) — nothing is chosen or fitted on the outside films.

    python experiments/tta_flip.py --cv-dir runs/cv-default --external ../shared/data/cxr-external-dev
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import DEFAULT_DATA, REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.data.inputs import find_films  # noqa: E402
from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, NORMAL  # noqa: E402
from cxr.metrics.stats import (  # noqa: E402
    accuracy_of,
    recall_of,
    softmax_with_temperature,
    stratified_bootstrap_ci,
)
from cxr.models.classifier import CXRClassifier  # noqa: E402
from cxr.run_folder import RunFolder, read_json  # noqa: E402

ARMS = ("none", "flip average")


def _logits(clf: CXRClassifier, files: List[Path], batch: int = 32) -> Dict[str, np.ndarray]:
    import torch

    out: Dict[str, List[np.ndarray]] = {arm: [] for arm in ARMS}
    for i in range(0, len(files), batch):
        x = clf.inputs(files[i : i + batch])
        with torch.inference_mode():
            plain = clf.model(x).float()
            mirrored = clf.model(torch.flip(x, dims=[-1])).float()
        out["none"].append(plain.numpy())
        out["flip average"].append(((plain + mirrored) / 2).numpy())
    return {arm: np.concatenate(v).astype(np.float64) for arm, v in out.items()}


def _pct(v: float, lo: float, hi: float) -> str:
    return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cv-dir", required=True, type=Path, help="The --output-dir of a python -m cxr.cv run.")
    p.add_argument("--data", default=DEFAULT_DATA, type=Path, help="The folder the CV ran on (the sample).")
    p.add_argument("--external", required=True, type=Path, help="A folder of Normal films from elsewhere.")
    args = p.parse_args()
    outside = find_films([str(args.external)]).files
    y_oof: List[np.ndarray] = []
    p_oof: Dict[str, List[np.ndarray]] = {arm: [] for arm in ARMS}
    normal_outside: Dict[str, List[np.ndarray]] = {arm: [] for arm in ARMS}
    k = 0
    while (args.cv_dir / f"fold-{k}" / "model").is_dir():
        run = RunFolder(args.cv_dir / f"fold-{k}")
        clf = CXRClassifier.from_pretrained(run.model_dir)
        test = read_json(run.split)["test"]
        y_oof.append(np.array([CLASS_NAMES.index(f.split("/")[0]) for f in test]))
        for arm, z in _logits(clf, [args.data / f for f in test]).items():
            p_oof[arm].append(softmax_with_temperature(z, clf.temperature))
        for arm, z in _logits(clf, outside).items():
            normal_outside[arm].append(softmax_with_temperature(z, clf.temperature).argmax(1) == NORMAL_INDEX)
        k += 1
    if k < 2:
        raise SystemExit(f"{args.cv_dir}: no fold-K/model folders of a python -m cxr.cv run")
    y = np.concatenate(y_oof)
    covid, normal = CLASS_NAMES.index("COVID"), NORMAL_INDEX
    critical = np.isin(y, [CLASS_NAMES.index(c) for c in CRITICAL_CLASSES])
    rows = []
    for arm in ARMS:
        pred = np.concatenate(p_oof[arm]).argmax(1)
        kept = np.concatenate(normal_outside[arm]).astype(np.int64)
        rows.append(
            [
                arm,
                _pct(*stratified_bootstrap_ci(y, pred, accuracy_of)),
                _pct(*stratified_bootstrap_ci(y, pred, recall_of(covid))),
                f"{int((pred[critical] == normal).sum())}/{int(critical.sum())}",
                _pct(*stratified_bootstrap_ci(np.zeros_like(kept), kept, lambda _y, v: float(np.mean(v)))),
            ]
        )
    print(f"\n{machine()}; {args.cv_dir}: {k} fold models, {len(y)} out-of-fold films, {len(outside)} outside films\n")
    print(
        table(
            [
                "test-time",
                "out-of-fold accuracy [95% CI]",
                "COVID recall",
                "COVID + VP called Normal",
                f"outside Normal called Normal ({k} models × {len(outside)})",
            ],
            rows,
        )
    )


NORMAL_INDEX = CLASS_NAMES.index(NORMAL)

if __name__ == "__main__":
    main()
