"""Evaluation throughput: ``cxr.eval`` over a folder against the bare model's batched forward.

Ours: :func:`cxr.training.evaluation.evaluate_folder` end to end on a warm pixel cache (loading the
checkpoint, the dataset, batched prediction under Accelerate, metrics and the files it writes), in a
process set up as ``python -m cxr.eval`` sets up its own (glibc keeps freed memory,
:mod:`cxr.allocator`); "glibc defaults" is the same with ``CXR_KEEP_FREED_MEMORY=0``. Bare: the same
model's forward over the same images, already preprocessed into tensors, same batch size, in a plain
process. Each measurement runs in a fresh process after one untimed warm-up pass; rounds rotate the
order; the table gives the median.

    python bench/eval_throughput.py --models resnet18,tf_efficientnet_lite0 --image-size 224
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List

import torch
from common import DEFAULT_DATA, Timer, keep_defaults_env, machine, rotated, run_worker, table


def make_checkpoint(name: str, size: int, folder: Path) -> Path:
    """A cxr model folder for ``name`` (random weights: speed does not depend on them)."""
    from cxr.data.preprocessing import PreprocessConfig
    from cxr.models import create_model
    from cxr.models.checkpoint import save_model_dir

    model, _ = create_model(name, 4, pretrained=False, image_size=size)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(size, cfg["input_size"][0], "model", cfg["mean"], cfg["std"])
    return save_model_dir(model, folder / name, prep, {"model": name})


def _measure(arm: str, ckpt: str, data: str, batch_size: int, out: str) -> float:
    """Seconds of one timed pass of ``arm`` after an untimed warm-up pass, in this process."""
    from cxr.data.data_source import load_radiographs
    from cxr.data.dataset import RadiographDataset
    from cxr.data.pixel_cache import cache_pixels
    from cxr.models.classifier import CXRClassifier
    from cxr.training.evaluation import evaluate_folder

    if arm == "bare":  # on the device cxr.eval's Accelerator picks
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        clf = CXRClassifier.from_pretrained(ckpt, device=device)
        ds = cache_pixels(load_radiographs(data), clf.preprocess.image_size).dataset
        view = RadiographDataset(ds, clf.preprocess)
        tensors = torch.cat([view.model_input(i) for i in range(len(view))])

        def run():
            with torch.inference_mode():
                for i in range(0, len(tensors), batch_size):
                    clf.model(tensors[i : i + batch_size].to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
    else:
        from cxr.allocator import keep_freed_memory

        # as importing cxr.commands does (run_worker did already); off for ours-defaults through the environment
        keep_freed_memory()

        def run():
            evaluate_folder(ckpt, data, Path(out), batch_size=batch_size)

    run()
    with Timer() as t:
        run()
    return t.seconds


def main() -> None:
    from cxr.data.data_source import load_radiographs
    from cxr.data.pixel_cache import cache_pixels

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--models", default="resnet18,tf_efficientnet_lite0", help="Comma-separated timm names.")
    p.add_argument("--image-size", type=int, default=224, help="Input side.")
    p.add_argument("--batch-size", type=int, default=64, help="Images per forward.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (order rotates).")
    p.add_argument(
        "--worker",
        default=None,
        metavar="ARM:CHECKPOINT:OUT",
        help="Internal: time one arm (bare, ours-defaults or ours) in this process and print JSON.",
    )
    args = p.parse_args()
    if args.worker:
        arm, ckpt, out = args.worker.split(":", 2)
        print(json.dumps({"seconds": _measure(arm, ckpt, args.data, args.batch_size, out)}))
        return
    arms = ("bare", "ours-defaults", "ours")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            ckpt = make_checkpoint(name, args.image_size, tmp)
            n = len(cache_pixels(load_radiographs(args.data), args.image_size).dataset)  # warm cache for all arms
            times: Dict[str, List[float]] = {a: [] for a in arms}
            for r in range(args.rounds):
                for arm in rotated(arms, r):
                    res = run_worker(
                        "eval_throughput.py",
                        [
                            "--data",
                            args.data,
                            "--batch-size",
                            str(args.batch_size),
                            "--worker",
                            f"{arm}:{ckpt}:{tmp / f'eval-{name}-{arm}'}",
                        ],
                        keep_defaults_env() if arm in ("bare", "ours-defaults") else None,
                    )
                    times[arm].append(res["seconds"])
                    print(f"round {r + 1} {name} {arm}: {n / res['seconds']:.1f} img/s", flush=True)
            b, d, o = (statistics.median(times[a]) for a in arms)
            rows.append([name, n, f"{n / b:.1f}", f"{n / o:.1f}", f"{b / o:.2f}×", f"{n / d:.1f}", f"{b / d:.2f}×"])
    print()
    print(
        f"Evaluation throughput, {args.image_size}px, batch {args.batch_size}, median of {args.rounds} interleaved "
        f"rounds — {machine()}"
    )
    print()
    print(
        table(
            [
                "model",
                "images",
                "bare forward img/s",
                "cxr.eval img/s",
                "cxr.eval / bare",
                "cxr.eval with glibc defaults img/s",
                "with glibc defaults / bare",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
