"""Training throughput: cxr's pipeline against a plain PyTorch loop, interleaved in one run.

Ours: the radiographs as a ``datasets`` dataset, the resized-pixel cache, cxr's augmentation and
normalisation (:func:`cxr.training.make_loader`) and cxr's Accelerate step
(:func:`cxr.training.train_step`), in a process set up as ``train_accelerate.py`` sets up its own
(glibc keeps freed memory, :mod:`cxr.allocator`); "ours, glibc defaults" is the same with
``CXR_KEEP_FREED_MEMORY=0``. Plain: ``torchvision.datasets.ImageFolder`` decoding every file every
time, torchvision transforms, and a bare forward/backward/step loop in a plain process. Same model,
image size, batch size, worker and thread counts. Every measurement runs in a fresh process; rounds
rotate the order; the table gives the median.

    python bench/train_throughput.py --models resnet18,tf_efficientnet_lite0 --image-size 224
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List

import torch

from common import DEFAULT_DATA, keep_defaults_env, machine, run_worker, table

ARMS = ("plain", "ours-defaults", "ours")


def _timed_steps(loader, step, warmup: int, steps: int) -> Dict[str, float]:
    it = iter(loader)
    wait = compute = 0.0
    images = 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        n = step(batch)
        t2 = time.perf_counter()
        if i >= warmup:
            wait += t1 - t0
            compute += t2 - t1
            images += n
    return {"images_per_s": images / (wait + compute), "wait_share": wait / (wait + compute)}


def ours(name: str, data: str, size: int, batch: int, workers: int, channels_last: bool, warmup: int, steps: int):
    from accelerate import Accelerator

    from cxr.data import cache_pixels, load_radiographs
    from cxr.models import create_model
    from cxr.preprocessing import PreprocessConfig
    from cxr.training import make_loader, train_step

    accelerator = Accelerator()
    pix = cache_pixels(load_radiographs(data), size).dataset
    model, _ = create_model(name, 4, pretrained=False, image_size=size)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(size, cfg["input_size"][0], "model", cfg["mean"], cfg["std"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(pix, prep, list(range(len(pix))), batch, True, workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(b):
        train_step(model, b, loss_fn, optimizer, scheduler, accelerator, channels_last)
        return len(b["labels"])

    return _timed_steps(loader, step, warmup, steps)


def plain(name: str, data: str, size: int, batch: int, workers: int, channels_last: bool, warmup: int, steps: int):
    import timm
    from torchvision import datasets, transforms

    import cxr  # noqa: F401  (alexnet/logreg registrations, for completeness)

    model = timm.create_model(name, num_classes=4)
    cfg = model.pretrained_cfg
    tf = transforms.Compose([
        transforms.Grayscale(num_output_channels=cfg["input_size"][0]),
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(data, transform=tf), batch_size=batch, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(b):
        x, y = b
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return len(y)

    return _timed_steps(loader, step, warmup, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--models", default="resnet18,tf_efficientnet_lite0", help="Comma-separated timm names.")
    p.add_argument("--image-size", type=int, default=224, help="Input side.")
    p.add_argument("--batch-size", type=int, default=16, help="Images per step.")
    p.add_argument("--workers", type=int, default=2, help="Loader worker processes (both pipelines).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps per measurement.")
    p.add_argument("--steps", type=int, default=5, help="Timed steps per measurement.")
    p.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (order rotates).")
    p.add_argument("--memory-formats", default="contiguous,channels_last", help="Which memory formats to compare.")
    p.add_argument("--worker", default=None, metavar="ARM:MODEL:FORMAT",
                   help="Internal: measure one arm (plain, ours-defaults or ours) in this process and print JSON.")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        arm, name, fmt = args.worker.split(":")
        if arm.startswith("ours"):
            from cxr.allocator import keep_freed_memory

            keep_freed_memory()  # as cxr.cli.run_cli does; off for ours-defaults through the environment
        fn = plain if arm == "plain" else ours
        res = fn(name, args.data, args.image_size, args.batch_size, args.workers, fmt == "channels_last",
                 args.warmup, args.steps)
        print(json.dumps(res))
        return
    formats = [f.strip() for f in args.memory_formats.split(",")]
    shared = ["--data", args.data, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
              "--workers", str(args.workers), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.threads:
        shared += ["--threads", str(args.threads)]
    results: Dict[tuple, List[Dict[str, float]]] = {}
    for r in range(args.rounds):
        for name in args.models.split(","):
            for fmt in formats:
                for label in ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]:
                    res = run_worker("train_throughput.py", [*shared, "--worker", f"{label}:{name}:{fmt}"],
                                     keep_defaults_env() if label == "ours-defaults" else None)
                    results.setdefault((name, fmt, label), []).append(res)
                    print(f"round {r + 1} {name} {fmt} {label}: {res['images_per_s']:.2f} img/s, "
                          f"data wait {100 * res['wait_share']:.1f}%", flush=True)
    rows = []
    for name in args.models.split(","):
        base = None
        for fmt in formats:
            med = {lab: statistics.median(x["images_per_s"] for x in results[(name, fmt, lab)]) for lab in ARMS}
            wait = {lab: statistics.median(x["wait_share"] for x in results[(name, fmt, lab)]) for lab in ARMS}
            base = base or med["plain"]
            rows.append([name, fmt, f"{med['plain']:.2f}", f"{med['ours']:.2f}", f"{med['ours'] / med['plain']:.2f}×",
                         f"{med['ours-defaults'] / med['plain']:.2f}×", f"{100 * wait['plain']:.1f}%",
                         f"{100 * wait['ours']:.1f}%", f"{med['ours'] / base:.2f}×"])
    print()
    print(f"Training throughput, {args.image_size}px, batch {args.batch_size}, {args.workers} workers, "
          f"median of {args.rounds} interleaved rounds of {args.steps} steps — {machine()}")
    print()
    print(table(["model", "memory format", "plain img/s", "ours img/s", "ours / plain",
                 "ours with glibc defaults / plain", "plain data wait", "ours data wait", "ours / plain contiguous"],
                rows))


if __name__ == "__main__":
    main()
