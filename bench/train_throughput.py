"""Training throughput: cxr's pipeline against a plain PyTorch loop, interleaved in one run.

Ours: the radiographs as a ``datasets`` dataset, the resized-pixel cache, cxr's augmentation (the study's: flip
and rotation) in the loader's workers (:func:`cxr.training.build.make_loader`, ``--augment-on loader``), uint8
batches normalised on the device, and cxr's Accelerate step (:func:`cxr.training.epochs.train_step`), in a process
set up as ``train_accelerate.py`` sets up its own (glibc keeps freed memory, :mod:`cxr.allocator`); "ours, glibc
defaults" is the same with ``CXR_KEEP_FREED_MEMORY=0``; "ours, device augmentation" augments each batch on the
training device instead (``--augment-on device``: the workers only read). Plain: ``torchvision.datasets.ImageFolder`` decoding every file every
time, torchvision transforms, and a bare forward/backward/step loop in a plain process. Same model,
image size, batch size, worker and thread counts, device and precision (``--mixed-precision bf16``:
Accelerate's autocast for ours, ``torch.autocast`` for plain). Every measurement runs in a fresh
process; rounds rotate the order; the table gives the median.

``--processes 1,N`` adds a scaling table: ours with one process against ``accelerate launch
--num_processes N --multi_gpu`` (one process per GPU; on a CPU-only machine the same distributed path
with ``ACCELERATE_USE_CPU=1`` and the cores shared out), batch ``--batch-size`` per process, and the
scaling efficiency ``throughput(N) / (N x throughput(1))``.

    python bench/train_throughput.py --models resnet18,tf_efficientnet_lite0 --image-size 224
    python bench/train_throughput.py --mixed-precision bf16 --processes 1,8     # on an 8-GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch
from common import DEFAULT_DATA, free_port, keep_defaults_env, machine, rotated, run_worker, table

ARMS = ("plain", "ours-defaults", "ours", "ours-device")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(loader, step, warmup: int, steps: int) -> Dict[str, float]:
    """Time ``steps`` steps after ``warmup``: images, seconds, and the seconds spent waiting for data."""
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
    return {"images": images, "seconds": wait + compute, "wait": wait}


def _summary(images: float, seconds: float, wait_share: float, processes: int = 1) -> Dict[str, float]:
    return {"images_per_s": images / seconds, "wait_share": wait_share, "processes": processes}


def ours(
    name: str,
    data: str,
    size: int,
    batch: int,
    workers: int,
    channels_last: bool,
    warmup: int,
    steps: int,
    mixed_precision: str = "no",
    augment_on: str = "loader",
) -> Optional[Dict[str, float]]:
    """Ours in this process (or in each process of an ``accelerate launch``); the main process gets
    the summary of all processes (total images over the slowest process's time), the others ``None``."""
    from accelerate import Accelerator

    from cxr.data.data_source import load_radiographs
    from cxr.data.dataset import ModelInput
    from cxr.data.device_augment import DeviceAugmentation
    from cxr.data.pixel_cache import cache_pixels
    from cxr.data.preprocessing import PreprocessConfig
    from cxr.models import create_model
    from cxr.training.build import make_loader
    from cxr.training.epochs import train_step

    accelerator = Accelerator(mixed_precision=mixed_precision)
    with accelerator.main_process_first():
        pix = cache_pixels(load_radiographs(data), size).dataset
    model, _ = create_model(name, 4, pretrained=False, image_size=size)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(size, cfg["input_size"][0], "model", cfg["mean"], cfg["std"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(pix, prep, list(range(len(pix))), batch, True, workers, "study", augment_on)
    on_device = DeviceAugmentation.named("study") if augment_on == "device" else None
    to_input = ModelInput(prep, on_device, channels_last=channels_last)
    generator = torch.Generator(device=accelerator.device).manual_seed(accelerator.process_index)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(b):
        train_step(model, b, loss_fn, optimizer, scheduler, accelerator, to_input, generator=generator)
        _sync(accelerator.device)
        return len(b["labels"])

    res = _timed_steps(loader, step, warmup, steps)
    every = accelerator.gather(
        torch.tensor([[res["images"], res["seconds"], res["wait"]]], dtype=torch.float64, device=accelerator.device)
    ).cpu()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    return _summary(
        float(every[:, 0].sum()), float(every[:, 1].max()), float((every[:, 2] / every[:, 1]).mean()), len(every)
    )


def plain(
    name: str,
    data: str,
    size: int,
    batch: int,
    workers: int,
    channels_last: bool,
    warmup: int,
    steps: int,
    mixed_precision: str = "no",
) -> Dict[str, float]:
    import timm
    from torchvision import datasets, transforms

    import cxr  # noqa: F401  (alexnet/logreg registrations, for completeness)

    model = timm.create_model(name, num_classes=4)
    cfg = model.pretrained_cfg
    tf = transforms.Compose(
        [
            transforms.Grayscale(num_output_channels=cfg["input_size"][0]),
            transforms.Resize((size, size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(data, transform=tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(b):
        x, y = b[0].to(device, non_blocking=True), b[1].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        _sync(device)
        return len(y)

    res = _timed_steps(loader, step, warmup, steps)
    return _summary(res["images"], res["seconds"], res["wait"] / res["seconds"])


def _launch(processes: int) -> Optional[List[str]]:
    """The command prefix that runs the worker in ``processes`` processes (``None``: plain python)."""
    if processes == 1:
        return None
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--multi_gpu",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def _scaling_env(processes: int) -> Dict[str, str]:
    """Without GPUs, the distributed path runs on CPU processes that share the cores out."""
    if processes == 1 or torch.cuda.is_available():
        return {}
    return {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder (default: the sample).")
    p.add_argument("--models", default="resnet18,tf_efficientnet_lite0", help="Comma-separated timm names.")
    p.add_argument("--image-size", type=int, default=224, help="Input side.")
    p.add_argument("--batch-size", type=int, default=16, help="Images per step (per process).")
    p.add_argument("--workers", type=int, default=2, help="Loader worker processes (both pipelines, per process).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps per measurement.")
    p.add_argument("--steps", type=int, default=5, help="Timed steps per measurement.")
    p.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (order rotates).")
    p.add_argument("--memory-formats", default="contiguous,channels_last", help="Which memory formats to compare.")
    p.add_argument(
        "--mixed-precision",
        choices=("no", "bf16"),
        default="no",
        help="bf16 autocast in both pipelines (for GPUs; on CPU it is usually slower).",
    )
    p.add_argument(
        "--processes",
        default="1",
        help="Comma-separated process counts for the scaling table of ours, e.g. 1,8 for all of 8 GPUs "
        "(1 alone: no scaling table).",
    )
    p.add_argument(
        "--worker",
        default=None,
        metavar="ARM:MODEL:FORMAT",
        help="Internal: measure one arm (plain, ours-defaults, ours or ours-device) in this process and print JSON.",
    )
    args = p.parse_args()
    try:
        processes = [int(n) for n in args.processes.split(",")]
    except ValueError:
        p.error(f"--processes takes comma-separated whole numbers, got {args.processes!r}")
    if any(n < 1 for n in processes) or 1 not in processes:
        p.error("--processes takes counts >= 1 and must include 1 (the baseline of the scaling efficiency)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        arm, name, fmt = args.worker.split(":")
        if arm.startswith("ours"):
            from cxr.allocator import keep_freed_memory, release_periodically

            # as importing cxr.commands and run_cli do (run_worker did already, accelerate launch not); off for
            # ours-defaults through the environment
            keep_freed_memory()
            release_periodically()
        fn = plain if arm == "plain" else ours
        extra = {"augment_on": "device"} if arm == "ours-device" else {}
        res = fn(
            name,
            args.data,
            args.image_size,
            args.batch_size,
            args.workers,
            fmt == "channels_last",
            args.warmup,
            args.steps,
            args.mixed_precision,
            **extra,
        )
        if res is not None:
            print(json.dumps(res))
        return
    formats = [f.strip() for f in args.memory_formats.split(",")]
    shared = [
        "--data",
        args.data,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--mixed-precision",
        args.mixed_precision,
    ]
    if args.threads:
        shared += ["--threads", str(args.threads)]
    results: Dict[tuple, List[Dict[str, float]]] = {}
    for r in range(args.rounds):
        for name in args.models.split(","):
            for fmt in formats:
                for label in rotated(ARMS, r):
                    res = run_worker(
                        "train_throughput.py",
                        [*shared, "--worker", f"{label}:{name}:{fmt}"],
                        keep_defaults_env() if label in ("plain", "ours-defaults") else None,
                    )
                    results.setdefault((name, fmt, label, 1), []).append(res)
                    print(
                        f"round {r + 1} {name} {fmt} {label}: {res['images_per_s']:.2f} img/s, "
                        f"data wait {100 * res['wait_share']:.1f}%",
                        flush=True,
                    )
                for n in processes:
                    if n == 1:
                        continue
                    res = run_worker(
                        "train_throughput.py",
                        [*shared, "--worker", f"ours:{name}:{fmt}"],
                        _scaling_env(n),
                        launcher=_launch(n),
                    )
                    if res["processes"] != n:  # e.g. a launcher that silently ran one process
                        raise SystemExit(f"asked for {n} processes, {res['processes']} ran")
                    results.setdefault((name, fmt, "ours", n), []).append(res)
                    print(
                        f"round {r + 1} {name} {fmt} ours, {n} processes: {res['images_per_s']:.2f} img/s", flush=True
                    )

    def med(name, fmt, lab, n=1, key="images_per_s"):
        return statistics.median(x[key] for x in results[(name, fmt, lab, n)])

    rows = []
    for name in args.models.split(","):
        base = med(name, formats[0], "plain")
        for fmt in formats:
            plain_, ours_, dflt = med(name, fmt, "plain"), med(name, fmt, "ours"), med(name, fmt, "ours-defaults")
            device = med(name, fmt, "ours-device")
            rows.append(
                [
                    name,
                    fmt,
                    f"{plain_:.2f}",
                    f"{ours_:.2f}",
                    f"{ours_ / plain_:.2f}×",
                    f"{dflt / plain_:.2f}×",
                    f"{100 * med(name, fmt, 'plain', key='wait_share'):.1f}%",
                    f"{100 * med(name, fmt, 'ours', key='wait_share'):.1f}%",
                    f"{ours_ / base:.2f}×",
                    f"{device:.2f}",
                    f"{device / plain_:.2f}×",
                    f"{100 * med(name, fmt, 'ours-device', key='wait_share'):.1f}%",
                ]
            )
    print()
    print(
        f"Training throughput, {args.image_size}px, batch {args.batch_size}, {args.workers} workers, "
        f"mixed precision {args.mixed_precision}, median of {args.rounds} interleaved rounds of {args.steps} steps "
        f"— {machine()}"
    )
    print()
    print(
        table(
            [
                "model",
                "memory format",
                "plain img/s",
                "ours img/s",
                "ours / plain",
                "ours with glibc defaults / plain",
                "plain data wait",
                "ours data wait",
                "ours / plain contiguous",
                "ours, device augmentation img/s",
                "ours, device augmentation / plain",
                "ours, device augmentation data wait",
            ],
            rows,
        )
    )
    if len(processes) > 1:
        scaling = []
        for name in args.models.split(","):
            for fmt in formats:
                one = med(name, fmt, "ours")
                for n in processes:
                    tput = med(name, fmt, "ours", n)
                    scaling.append(
                        [
                            name,
                            fmt,
                            n,
                            f"{tput:.2f}",
                            f"{tput / one:.2f}×",
                            f"{100 * tput / (n * one):.0f}%",
                            f"{100 * med(name, fmt, 'ours', n, 'wait_share'):.1f}%",
                        ]
                    )
        device = "GPU" if torch.cuda.is_available() else "CPU (ACCELERATE_USE_CPU=1, cores shared out)"
        print()
        print(
            f"Scaling of ours through accelerate launch, one process per {device}, batch {args.batch_size} per process:"
        )
        print()
        print(
            table(
                [
                    "model",
                    "memory format",
                    "processes",
                    "img/s (all processes)",
                    "speed-up",
                    "scaling efficiency",
                    "data wait",
                ],
                scaling,
            )
        )


if __name__ == "__main__":
    main()
