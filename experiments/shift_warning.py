"""Would a per-film "unfamiliar source" warning help? The guard's distances on films of the sample's own sources
against films from elsewhere.

The out-of-distribution guard scores each film by its feature-space distance to the training films and flags it
above the 98th percentile of the validation films' scores (built to catch non-radiographs). This script scores,
with a trained run's model and guard, its validation films (they set every threshold here), its test films (the
sample's own sources, never seen) and a folder of films from elsewhere (the external dev set: measured, never
tuned on), and prints for lower thresholds — validation percentiles 80, 90, 95 and the guard's own — the share of
test and outside films above each: a useful warning fires on outside films far more often than on the test
films. Then the two-sample tests a whole-set summary (``cxr.eval``'s ``shift``) would rest on.

    python experiments/shift_warning.py --run RUN --external ../shared/data/cxr-external-dev [--per-stage]

``--per-stage`` also scores each feature stage the guard keeps on its own (the distance to the k-th nearest
training film in that stage's features alone): does any stage see what the whole misses?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import DEFAULT_DATA, REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.data.inputs import find_films  # noqa: E402
from cxr.models.classifier import CXRClassifier  # noqa: E402
from cxr.models.ood import _normalised, _stages, capture_features  # noqa: E402
from cxr.run_folder import RunFolder, read_json  # noqa: E402


def _features(clf: CXRClassifier, files: List[Path], batch: int = 32):
    import torch

    out = []
    for i in range(0, len(files), batch):
        x = clf.inputs(files[i : i + batch])
        with torch.inference_mode(), capture_features(clf.model) as captured:
            clf.model(x)
        out.append(captured.take().cpu())
    return torch.cat(out)


def _stage_scores(clf: CXRClassifier, features) -> List[np.ndarray]:
    """Per feature stage, each film's cosine distance to its k-th nearest training film in that stage alone."""
    sizes = [2 * c for _, c in _stages(clf.model)]
    edges = np.cumsum([0, *sizes])
    reference = clf.ood.reference.float()
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        sim = _normalised(features[:, a:b]) @ _normalised(reference[:, a:b]).T
        out.append((1.0 - sim.topk(clf.ood.k, dim=1).values[:, -1]).numpy())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="A finished training run's --output-dir.")
    p.add_argument("--data", default=DEFAULT_DATA, type=Path, help="The folder the run trained on (the sample).")
    p.add_argument("--external", required=True, type=Path, help="A folder of films from elsewhere (recursive).")
    p.add_argument("--per-stage", action="store_true", help="Also score each feature stage of the guard alone.")
    args = p.parse_args()
    from scipy import stats

    run = RunFolder(args.run)
    clf = CXRClassifier.from_pretrained(run.model_dir)
    if clf.ood is None:
        raise SystemExit(f"{run.model_dir} has no out-of-distribution guard")
    split = read_json(run.split)
    parts = {
        "validation (sets the thresholds)": [args.data / f for f in split["validation"]],
        "test (the sample's own sources)": [args.data / f for f in split["test"]],
        f"outside ({args.external.name})": find_films([str(args.external)]).files,
    }
    features = {name: _features(clf, files) for name, files in parts.items()}
    scores = {name: clf.ood.scores(f) for name, f in features.items()}
    val = next(iter(scores.values()))
    cuts = [(f"validation {q}th percentile", float(np.percentile(val, q))) for q in (80, 90, 95)]
    cuts.append(("the guard's threshold (validation 98th)", clf.ood.threshold))
    rows = []
    for label, cut in cuts:
        rows.append(
            [label, f"{cut:.4f}"]
            + [f"{int((s > cut).sum())}/{len(s)} ({(s > cut).mean():.0%})" for s in list(scores.values())[1:]]
        )
    names = list(scores)[1:]
    print(f"\n{machine()}; run {args.run}\n")
    print(
        table(
            ["threshold", "score"] + [f"above it: {n}" for n in names],
            rows,
        )
    )
    tests = []
    for n in names:
        ks = stats.ks_2samp(scores[n], val)
        mw = stats.mannwhitneyu(scores[n], val, alternative="greater")
        tests.append(
            [
                n,
                f"{np.median(scores[n]):.4f}",
                f"{np.median(val):.4f}",
                f"{ks.statistic:.2f} (p {ks.pvalue:.1e})",
                f"{mw.pvalue:.1e}",
            ]
        )
    print("\nEach set's scores against the validation films' (two-sample tests):\n")
    print(
        table(
            ["films", "median score", "validation median", "Kolmogorov-Smirnov D (p)", "Mann-Whitney p (greater)"],
            tests,
        )
    )

    if args.per_stage and _stages(clf.model):
        per = {name: _stage_scores(clf, f) for name, f in features.items()}
        rows = []
        for k in range(len(next(iter(per.values())))):
            cut = float(np.percentile(per[next(iter(per))][k], 95))
            rows.append([str(k), f"{cut:.4f}"] + [f"{(per[n][k] > cut).mean():.0%}" for n in names])
        print("\nEach feature stage alone (above its validation 95th percentile):\n")
        print(table(["stage", "validation 95th"] + [f"above it: {n}" for n in names], rows))


if __name__ == "__main__":
    main()
