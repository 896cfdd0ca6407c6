"""Loader throughput: images per second that one loader worker process hands to the training process, for the
per-image float path the loader used before and for the paths it has now, interleaved in one run.

Arms (every one reads the same cached films through :class:`cxr.data.dataset.RadiographDataset`'s batched Arrow
read, ``--batch-size`` films per batch, through a ``torch.utils.data.DataLoader`` with ``--workers`` worker
processes):

- ``float, augmented per image`` — what the workers did before: augment each film (the ``--augment`` choice,
  torchvision on one film), then replicate it to 3 channels and normalise it, and ship ``B x 3 x H x W`` float32;
- ``uint8, augmented per image`` — ``--augment-on loader`` now: the same augmentation in the worker, ``B x 1 x H x
  W`` uint8 shipped; the channels and normalisation are made on the device (:class:`cxr.data.dataset.ModelInput`);
- ``uint8, read only`` — ``--augment-on device``: the workers only read; augmentation, channels and normalisation
  run batched on the device.

The device side is not timed here (``bench/train_throughput.py`` times whole training steps). Each measurement
runs in a fresh process; rounds rotate the order; the table gives the median images per second divided by the
number of worker processes, and each arm's ratio to the float path.

    python bench/loader_throughput.py --image-size 224 --workers 1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List

import torch
from common import DEFAULT_DATA, machine, rotated, run_worker, table

ARMS = ("float", "uint8-augmented", "uint8-read")
LABELS = {
    "float": "float, augmented per image (before)",
    "uint8-augmented": "uint8, augmented per image (--augment-on loader)",
    "uint8-read": "uint8, read only (--augment-on device)",
}


class _FloatView(torch.utils.data.Dataset):
    """The loader's item as it was before: the film augmented, replicated and normalised in the worker."""

    def __init__(self, view):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitems__(self, positions):
        items = self.view.__getitems__(positions)
        return [{**it, "pixels": self.view.preprocess.normalize(it["pixels"])} for it in items]


def _collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def measure(arm: str, data: str, size: int, batch: int, workers: int, batches: int, augment: str) -> Dict[str, float]:
    """Images per second through one DataLoader of ``arm``, after one untimed pass to start the workers."""
    from cxr.data.data_source import load_radiographs
    from cxr.data.dataset import RadiographDataset
    from cxr.data.pixel_cache import cache_pixels
    from cxr.data.preprocessing import PreprocessConfig, TrainAugmentation

    pix = cache_pixels(load_radiographs(data), size).dataset
    prep = PreprocessConfig.create(size, 3, "imagenet")
    in_worker = TrainAugmentation.named(augment) if arm != "uint8-read" else None
    view = RadiographDataset(pix, prep, augment=in_worker)
    dataset = _FloatView(view) if arm == "float" else view
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=_collate, persistent_workers=True
    )
    it = iter(loader)
    next(it)  # the workers started and the first batches in flight
    images, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        images += len(b["labels"])
    seconds = time.perf_counter() - t0
    return {"images_per_s": images / seconds, "bytes_per_image": b["pixels"][0].numel() * b["pixels"].element_size()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--image-size", type=int, default=224, help="Cached side in pixels.")
    p.add_argument("--batch-size", type=int, default=16, help="Films per batch.")
    p.add_argument("--workers", type=int, default=1, help="Loader worker processes (figures are per process).")
    p.add_argument("--batches", type=int, default=60, help="Timed batches per measurement.")
    p.add_argument("--augment", default="study", help="The --augment choice the augmenting arms apply.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (order rotates).")
    p.add_argument("--worker", default=None, help="Internal: measure one arm in this process and print JSON.")
    args = p.parse_args()
    if args.workers < 1:
        p.error("--workers must be at least 1: the figures are per worker process")
    if args.worker:
        res = measure(
            args.worker, args.data, args.image_size, args.batch_size, args.workers, args.batches, args.augment
        )
        print(json.dumps(res))
        return
    shared = ["--data", args.data, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    shared += ["--workers", str(args.workers), "--batches", str(args.batches), "--augment", args.augment]
    results: Dict[str, List[Dict[str, float]]] = {}
    for r in range(args.rounds):
        for arm in rotated(ARMS, r):
            res = run_worker("loader_throughput.py", [*shared, "--worker", arm])
            results.setdefault(arm, []).append(res)
            print(f"round {r + 1} {arm}: {res['images_per_s'] / args.workers:.1f} img/s per worker", flush=True)
    per_worker = {a: statistics.median(x["images_per_s"] for x in results[a]) / args.workers for a in ARMS}
    rows = [
        [
            LABELS[a],
            f"{per_worker[a]:.1f}",
            f"{per_worker[a] / per_worker['float']:.2f}×",
            f"{results[a][0]['bytes_per_image'] / 1024:.0f}",
        ]
        for a in ARMS
    ]
    print()
    print(
        f"Loader throughput, {args.image_size}px, batch {args.batch_size}, {args.workers} worker process(es), "
        f"--augment {args.augment}, median of {args.rounds} interleaved rounds of {args.batches} batches — {machine()}"
    )
    print()
    print(table(["path", "img/s per worker process", "vs float path", "KiB shipped per image"], rows))


if __name__ == "__main__":
    main()
