"""Write the out-of-fold predictions the package ships for ``--choose-on auto`` from a finished cross-validation.

A run of the default recipe on the very films of that CV (by name and content) chooses its temperature and
operating point on these (``cxr/training/recipes/default_out_of_fold.json``, package data, less the run's own test
films); any other run uses its own validation films or a ``--choose-on CV_DIR``. When the default recipe changes,
its CV is rerun and the bundle remade with this script (docs/training.md, "The operating point"):

    python -m cxr.cv --data ../shared/data/cxr-sample --folds 5 --model tf_efficientnet_lite0 --image-size 224 \\
        --output-dir runs/cv-default
    python tools/bundle_out_of_fold.py --cv-dir runs/cv-default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.training.held_out import BUNDLED, bundle_from_cv  # noqa: E402


def _hardware() -> str:
    """The CPU cores (and GPUs) this builder runs on: the CV's, when it runs where the CV ran."""
    import torch

    gpus = torch.cuda.device_count()
    return f"{os.cpu_count()} CPU cores" + (f", {gpus}x {torch.cuda.get_device_name(0)}" if gpus else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cv-dir", required=True, help="A finished python -m cxr.cv folder of the default recipe.")
    p.add_argument(
        "--command",
        default="python -m cxr.cv --data ../shared/data/cxr-sample --folds 5 --model tf_efficientnet_lite0 "
        "--image-size 224 (all else default)",
        help="The command the CV was made with, written into the bundle's description.",
    )
    p.add_argument("--commit", default=None, help="The commit the CV ran on (default: this checkout's HEAD).")
    p.add_argument("--output", default=str(BUNDLED), help="Where to write the bundle (default: the shipped one).")
    args = p.parse_args()
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    what = (
        f"Out-of-fold logits of cxr's default recipe: {args.command}, commit {commit}, {time.strftime('%Y-%m-%d')}, "
        f"{_hardware()}. "
        "One row per film of the 600-film sample (150 per class), scored by the fold model that did not train on "
        "it; logits recovered as T_k log p from each fold's calibrated predictions. File names (to leave a run's "
        "own test films out) and content digests (a run uses the bundle only on these very films), no pixels. "
        "Written by tools/bundle_out_of_fold.py."
    )
    bundle = bundle_from_cv(args.cv_dir, what)
    with open(args.output, "w") as f:
        json.dump(bundle, f, separators=(",", ":"))
    print(f"wrote {args.output}: {bundle['images']} films, {bundle['folds']} folds, recipe {bundle['recipe']}")


if __name__ == "__main__":
    main()
