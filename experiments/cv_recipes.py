"""Recipe comparison by cross-validation: ``python -m cxr.cv`` once per named recipe, several at a time,
then one table of the out-of-fold figures (bootstrap 95% intervals) of every recipe that finished.

Each recipe is a list of ``train_accelerate.py`` flags on top of the common ones (model, image size,
folds, seed); ``paper`` is the study's own recipe (``--preset paper``), ``default`` today's defaults.
Recipes run as separate processes (``--parallel`` at a time, ``--threads`` torch threads each); a
rerun resumes every unfinished CV and reuses the finished ones. The table goes to stdout and to
``OUTPUT_DIR/recipes.md``, with the COVID and Viral Pneumonia images that most recipes call Normal.

    python experiments/cv_recipes.py --output-dir runs/cv-recipes --recipes paper,default --parallel 1
    python experiments/cv_recipes.py --output-dir runs/cv --parallel 8 --threads 2    # on a 16-core GPU machine

Research use only — not for diagnosis.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import DEFAULT_DATA, REPO, machine, table  # noqa: E402

#: The study's preset with AdamW, weight decay 0.05, one warm-up epoch then cosine, batch 16, keeping the last epoch
_ADAMW_COSINE = "--preset paper --optimizer adamw --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --batch-size 16 --keep last"
#: Named recipes: the flags each adds to the common ones.
RECIPES: Dict[str, List[str]] = {
    "paper": "--preset paper".split(),
    "default": [],
    "bs16-e10": "--preset paper --batch-size 16 --epochs 10".split(),
    "bs16-e10-last": "--preset paper --batch-size 16 --epochs 10 --keep last".split(),
    "bs16-e10-last-refit": "--preset paper --batch-size 16 --epochs 10 --keep last --final-fit".split(),
    "plain-loop": "--preset paper --batch-size 16 --epochs 6 --lr 3e-4 --augment flip --keep last".split(),
    "plain-loop-refit": "--preset paper --batch-size 16 --epochs 6 --lr 3e-4 --augment flip --keep last --final-fit".split(),
    "adamw-cos": "--preset paper --optimizer adamw --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --batch-size 16 --epochs 10 --keep last".split(),
    "adamw-cos-flip": "--preset paper --optimizer adamw --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --batch-size 16 --epochs 10 --keep last --augment flip".split(),
    "adamw-cos-refit": "--preset paper --optimizer adamw --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --batch-size 16 --epochs 10 --keep last --final-fit".split(),
    "adamw-cos-e15-lr1e-3": "--preset paper --optimizer adamw --weight-decay 0.05 --lr-scheduler cosine --warmup-epochs 1 --batch-size 16 --epochs 15 --lr 1e-3 --keep last".split(),
    "adamw-cos-flip-refit": (_ADAMW_COSINE + " --augment flip --epochs 10 --final-fit").split(),
    "adamw-cos-flip-refit-seed2": (_ADAMW_COSINE + " --augment flip --epochs 10 --final-fit --seed 2").split(),
    "adamw-cos-flip-e15-lr1e-3": (_ADAMW_COSINE + " --augment flip --epochs 15 --lr 1e-3").split(),
    "adamw-cos-flip-e15-lr1e-3-refit": (_ADAMW_COSINE + " --augment flip --epochs 15 --lr 1e-3 --final-fit").split(),
    "adamw-cos-flip-lr1e-3-refit": (_ADAMW_COSINE + " --augment flip --epochs 10 --lr 1e-3 --final-fit").split(),
    "adamw-cos-flip-e20-refit": (_ADAMW_COSINE + " --augment flip --epochs 20 --final-fit").split(),
    "adamw-cos-flip-ls-refit": (
        _ADAMW_COSINE + " --augment flip --epochs 10 --label-smoothing 0.1 --final-fit"
    ).split(),
    "adamw-cos-flip-ema-refit": (_ADAMW_COSINE + " --augment flip --epochs 10 --ema-decay 0.99 --final-fit").split(),
    "default-seed2": "--seed 2".split(),
    "lr2e-3": "--lr 2e-3".split(),
    "e20": "--epochs 20".split(),
    "lr2e-3-e20": "--lr 2e-3 --epochs 20".split(),
    "ld0.85-lr2e-3": "--layer-decay 0.85 --lr 2e-3".split(),
    "ld0.9-lr2e-3": "--layer-decay 0.9 --lr 2e-3".split(),
    "dp0.1": "--drop-path 0.1".split(),
    "frozen-bn": "--freeze-bn-stats".split(),
    "radiograph": "--augment radiograph".split(),
    "bs32-lr2e-3": "--batch-size 32 --lr 2e-3".split(),
    "lr2e-3-refit": "--lr 2e-3 --final-fit".split(),
    "default-seed3": "--seed 3".split(),
    "bs8": "--batch-size 8".split(),
    "wd0": "--weight-decay 0".split(),
    "wd0.2": "--weight-decay 0.2".split(),
    "warmup0": "--warmup-epochs 0".split(),
    "warmup3": "--warmup-epochs 3".split(),
    "ld0.9": "--layer-decay 0.9".split(),
    "e20-refit": "--epochs 20 --final-fit".split(),
    "e12": "--epochs 12".split(),
    # the quick start's recipe (8 epochs, run at --image-size 128) and shorter ones that leave time for a second model
    "e8": "--epochs 8".split(),
    "e6": "--epochs 6".split(),
    "adam-flip-e10-refit": "--preset paper --batch-size 16 --epochs 10 --lr 3e-4 --augment flip --keep last --final-fit".split(),
}


def _pct(s: Dict[str, float]) -> str:
    return f"{100 * s['value']:.1f}% [{100 * s['low']:.1f}, {100 * s['high']:.1f}]"


def _row(name: str, result: Dict) -> List[str]:
    o = result["out_of_fold"]
    return [
        name,
        " ".join(RECIPES[name]) or "(defaults)",
        _pct(o["accuracy"]),
        _pct(o["covid_recall"]),
        f"{o['covid_to_normal']['value']:.0f}",
        f"{o['viral_pneumonia_to_normal']['value']:.0f}",
        f"{o['macro_auroc']['value']:.4f}",
        f"{o['ece']['value']:.3f}",
    ]


def persistent_misses(folders: List[Path], share: float = 0.5) -> List[List[str]]:
    """COVID and Viral Pneumonia images that at least ``share`` of the finished CVs in ``folders`` call Normal
    out of fold: errors no recipe among them fixes."""
    called: Dict[str, int] = {}
    done = [f / "oof_predictions.csv" for f in folders if (f / "oof_predictions.csv").is_file()]
    for path in done:
        with path.open(newline="") as fh:
            for r in csv.DictReader(fh):
                if r["label"] in ("COVID", "Viral Pneumonia") and r["prediction"] == "Normal":
                    called[r["file_name"]] = called.get(r["file_name"], 0) + 1
    return [
        [name, f"{n} of {len(done)}"]
        for name, n in sorted(called.items(), key=lambda kv: (-kv[1], kv[0]))
        if n >= share * len(done)
    ]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="Class-folder X-rays (default: $CXR_SAMPLE_DIR).")
    p.add_argument("--output-dir", required=True, type=Path, help="One CV folder per recipe goes here.")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"Comma-separated recipe names: {', '.join(RECIPES)}.")
    p.add_argument("--model", default="tf_efficientnet_lite0", help="timm model every recipe trains.")
    p.add_argument("--image-size", type=int, default=224, help="Input side in pixels.")
    p.add_argument("--folds", type=int, default=5, help="Folds of each CV.")
    p.add_argument("--parallel", type=int, default=1, help="Recipes run at the same time.")
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 2),
        help="Torch threads per recipe (OMP_NUM_THREADS and --cpu-threads).",
    )
    p.add_argument("--num-workers", type=int, default=1, help="Data-loader workers per recipe.")
    args = p.parse_args()
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or args.parallel < 1 or args.threads < 1:
        p.error(
            f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}"
            if unknown
            else "--parallel and --threads must be at least 1"
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    pending, running, seconds = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            cmd = [
                sys.executable,
                "-m",
                "cxr.cv",
                "--data",
                args.data,
                "--output-dir",
                str(args.output_dir / name),
                "--model",
                args.model,
                "--image-size",
                str(args.image_size),
                "--folds",
                str(args.folds),
                "--num-workers",
                str(args.num_workers),
                "--cache-dir",
                str(args.output_dir / "cache" / name),
                "--cpu-threads",
                str(args.threads),
                *RECIPES[name],
            ]
            log = open(args.output_dir / f"{name}.log", "w")
            running[name] = (
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                time.time(),
            )
        time.sleep(2)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                seconds[name] = time.time() - t0
                print(f"{name}: exit {proc.returncode} after {seconds[name]:.0f} s", file=sys.stderr, flush=True)
                del running[name]
    rows = []
    for name in names:
        path = args.output_dir / name / "cv.json"
        if path.is_file():
            rows.append(_row(name, json.loads(path.read_text())))
    text = "\n".join(
        [
            f"{args.model}, {args.image_size} px, {args.folds}-fold CV on `{args.data}` (out-of-fold figures over every "
            f"image; bootstrap 95% intervals). {machine()}",
            "",
            table(
                [
                    "recipe",
                    "flags",
                    "accuracy",
                    "COVID recall",
                    "COVID→Normal",
                    "Viral Pn.→Normal",
                    "macro AUROC",
                    "ECE",
                ],
                rows,
            ),
            "",
            "COVID and Viral Pneumonia images that at least half of these recipes call Normal out of fold:",
            "",
            table(["image", "called Normal by"], persistent_misses([args.output_dir / n for n in names])),
            "",
        ]
    )
    (args.output_dir / "recipes.md").write_text(text)
    print(text)
    return 0 if len(rows) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
