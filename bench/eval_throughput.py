"""Evaluation throughput: ``cxr.eval`` over a folder against the bare model's batched forward.

Ours: :func:`cxr.evaluation.evaluate_folder` end to end on a warm pixel cache (loading the
checkpoint, the dataset, batched prediction under Accelerate, metrics and the files it writes).
Bare: the same model's forward over the same images, already preprocessed into tensors, same batch
size. Rounds alternate the order; the table gives the median.

    python bench/eval_throughput.py --models resnet18,tf_efficientnet_lite0 --image-size 224
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from common import DEFAULT_DATA, Timer, machine, table


def make_checkpoint(name: str, size: int, folder: Path) -> Path:
    """A cxr model folder for ``name`` (random weights: speed does not depend on them)."""
    from cxr.checkpoint import save_model_dir
    from cxr.models import create_model
    from cxr.preprocessing import PreprocessConfig

    model, _ = create_model(name, 4, pretrained=False, image_size=size)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(size, cfg["input_size"][0], "model", cfg["mean"], cfg["std"])
    return save_model_dir(model, folder / name, prep, {"model": name})


def main() -> None:
    from cxr.classifier import CXRClassifier
    from cxr.data import RadiographDataset, cache_pixels, load_radiographs
    from cxr.evaluation import evaluate_folder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--models", default="resnet18,tf_efficientnet_lite0", help="Comma-separated timm names.")
    p.add_argument("--image-size", type=int, default=224, help="Input side.")
    p.add_argument("--batch-size", type=int, default=64, help="Images per forward.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds.")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            ckpt = make_checkpoint(name, args.image_size, tmp)
            clf = CXRClassifier.from_pretrained(ckpt)
            ds = cache_pixels(load_radiographs(args.data), args.image_size).dataset  # warm cache for both
            view = RadiographDataset(ds, clf.preprocess)
            tensors = torch.stack([view[i]["pixel_values"] for i in range(len(view))])
            n = len(tensors)

            def bare():
                with torch.inference_mode():
                    for i in range(0, n, args.batch_size):
                        clf.model(tensors[i:i + args.batch_size])

            def ours():
                evaluate_folder(str(ckpt), args.data, tmp / f"eval-{name}", batch_size=args.batch_size)

            times = {"bare": [], "ours": []}
            bare()  # warm-up (allocator, kernels)
            for r in range(args.rounds):
                for label, fn in ((("bare", bare), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("bare", bare))):
                    with Timer() as t:
                        fn()
                    times[label].append(t.seconds)
                    print(f"round {r + 1} {name} {label}: {n / t.seconds:.1f} img/s", flush=True)
            b, o = statistics.median(times["bare"]), statistics.median(times["ours"])
            rows.append([name, n, f"{n / b:.1f}", f"{n / o:.1f}", f"{b / o:.2f}×"])
    print()
    print(f"Evaluation throughput, {args.image_size}px, batch {args.batch_size}, median of {args.rounds} interleaved "
          f"rounds — {machine()}")
    print()
    print(table(["model", "images", "bare forward img/s", "cxr.eval img/s", "cxr.eval / bare"], rows))


if __name__ == "__main__":
    main()
