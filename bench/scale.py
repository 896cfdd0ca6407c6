"""What each stage costs per film as the database grows: 600, 6,000, 21,165 films (the COVID-19 Radiography
Database's size) and, for the data layer alone, 100,000.

The databases are **synthetic**: every film is a copy of one of the sample's, under a new name, made distinct by a
PNG text chunk naming it a synthetic copy (``cxr-synthetic``), so that no two files are identical; each folder holds a
``SYNTHETIC.md`` saying so. They measure cost, never accuracy. A size below the sample's, or one whose files would not
fit the disk's free space, is refused before anything is written.

Each stage runs in a fresh process (``python bench/scale.py --stage ...``); the parent reads the peak anonymous
memory (the anonymous and shared pages of that process and every process it started, each page counted once:
``Pss_Anon`` + ``Pss_Shmem`` summed, sampled every 250 ms; the memory-mapped pixel cache is file-backed and does
not count) and the wall time. Stages: ``listing``
(``load_data_source``), ``cache`` (decode and resize every film into a fresh pixel cache; its size on disk),
``split`` (the stratified split), ``train`` (one epoch of ``logreg`` through ``train_accelerate.py``'s code: the
split's training films, then the kept model scored on every part, the guard, the run's files), ``eval``
(``python -m cxr.eval`` on every film), ``predict`` (``python -m cxr.predict`` on every film) and ``cv-setup`` (a
5-fold CV's fold files and content digests). A stage whose runs took under ``--repeat-below`` seconds (10) runs
again, up to ``--max-runs`` (5) times. Printed: per size, image size and stage, the runs, the median seconds, the
milliseconds per film and its ratio to the same at 6,000 films, the largest peak anonymous memory and its ratio to
the same at 600 films, and the disk used.

Targets (issue: "At the database's size and beyond"): per-film time at 21,165 films within 1.2× of its time at
6,000 for every stage, and the data layer's at 100,000 too; peak memory at 21,165 at most 1.5× that at 600.

    python bench/scale.py --root /tmp/cxr-scale --sizes 600 6000 21165 --data-only-sizes 100000 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from common import DEFAULT_DATA, REPO, machine, table

sys.path.insert(0, str(REPO))

DATA_STAGES = ("listing", "cache", "split")
MODEL_STAGES = ("train", "eval", "predict", "cv-setup")
MARKER = "SYNTHETIC.md"
SAMPLE_SIZE = 600


def _png_with_text(data: bytes, text: str) -> bytes:
    """The PNG ``data`` with a ``tEXt`` chunk (keyword ``cxr-synthetic``) after its header chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit("the sample's films must be PNG files")
    ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
    body = b"cxr-synthetic\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def _sample_films(sample: Path) -> List[Path]:
    films = sorted(p for p in sample.glob("*/*.png"))
    if not films:
        raise SystemExit(f"no PNG films in the class folders of {sample}")
    return films


def check_space(films: Sequence[Path], root: Path, sizes: Sequence[int]) -> None:
    """Refuse, before writing, synthetic databases of ``sizes`` that would not fit the free space under ``root``
    (databases already complete there count as written)."""
    per_film = sum(f.stat().st_size for f in films) / len(films) * 1.05
    todo = [n for n in sizes if not ((root / f"db-{n}" / MARKER).is_file())]
    need = int(per_film * sum(todo))
    existing = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise SystemExit(
            f"the synthetic databases of {', '.join(f'{n:,}' for n in todo)} films need about {need / 2**30:.1f} GiB; "
            f"{existing} has {free / 2**30:.1f} GiB free"
        )


def make_synthetic(sample: Path, root: Path, n: int) -> Path:
    """A synthetic database of ``n`` films in ``root/db-N`` (reused when complete), made from the sample's films.

    Raises:
        SystemExit: ``n`` below the sample's size, or more bytes than the disk has free (before writing).
    """
    films = _sample_films(sample)
    if n < len(films):
        raise SystemExit(f"--sizes {n}: below the sample's {len(films)} films; a synthetic database grows it")
    folder = root / f"db-{n}"
    if (folder / MARKER).is_file() and sum(1 for _ in folder.glob("*/*.png")) == n:
        return folder
    check_space(films, root, [n])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(
        f"# Synthetic database ({n} films)\n\nEvery film is a copy of one of the sample's ({sample}) under a new name, "
        "with a PNG text chunk 'cxr-synthetic' naming its copy number, so no two files are identical. Made by "
        "bench/scale.py to measure cost. Never use it for accuracy.\n"
    )
    raw = {f: f.read_bytes() for f in films}
    for i in range(n):
        src = films[i % len(films)]
        out = folder / src.parent.name / f"{src.stem}-syn{i:06d}.png"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(_png_with_text(raw[src], f"synthetic copy {i} of {src.parent.name}/{src.name}"))
    return folder


def _anon_kib(pids: Sequence[int]) -> int:
    """The anonymous and shared memory of ``pids`` together, each page counted once: the sum of their proportional
    set sizes (``Pss_Anon`` + ``Pss_Shmem``). ``RssAnon`` summed would count a page a forked loader worker still
    shares with its parent once per process."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def _descendants(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            children = []
        todo.extend(int(c) for c in children)
    return out


def run_stage(stage: str, db: Path, size: int, work: Path) -> Dict[str, float]:
    """Run ``stage`` in a fresh process; its JSON, with ``peak_anon_mb`` and ``wall_s`` added."""
    cmd = [sys.executable, str(Path(__file__)), "--stage", stage, "--db", str(db), "--image-size", str(size)]
    cmd += ["--work", str(work)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CXR_CACHE_DIR": str(work / "cache")}
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{stage}-{size}.log"
    start = time.perf_counter()
    with open(log, "w") as err_file, tempfile.TemporaryFile("w+") as out_file:  # files: a full pipe would block it
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out_file, stderr=err_file, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _anon_kib(_descendants(proc.pid)))
            time.sleep(0.25)  # reading smaps_rollup walks the page tables: sampled often, it would slow the stage
        out_file.seek(0)
        out = out_file.read()
    err = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} on {db} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_anon_mb=peak / 1024, wall_s=time.perf_counter() - start)
    return result


def run_repeated(stage: str, db: Path, size: int, work: Path, below: float, max_runs: int) -> Dict[str, float]:
    """:func:`run_stage`, run again while the runs so far took under ``below`` seconds in all (at most
    ``max_runs``): the median seconds, the largest peak memory, and ``runs``. A stage of a second or less varies
    far more from one run to the next than one of a minute."""
    runs = [run_stage(stage, db, size, work)]
    while len(runs) < max_runs and sum(r["seconds"] for r in runs) < below:
        runs.append(run_stage(stage, db, size, work))
    seconds = sorted(r["seconds"] for r in runs)
    mid = len(seconds) // 2
    median = seconds[mid] if len(seconds) % 2 else (seconds[mid - 1] + seconds[mid]) / 2
    return {**runs[-1], "seconds": median, "peak_anon_mb": max(r["peak_anon_mb"] for r in runs), "runs": len(runs)}


def _du_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _stage_worker(stage: str, db: Path, size: int, work: Path) -> Dict[str, float]:
    """One stage, in this process, set up as cxr's commands set up theirs (glibc keeps freed memory,
    :mod:`cxr.allocator`, first thing, and the heap's free memory is handed back periodically); returns its seconds
    (imports excluded) and the disk it wrote."""
    from cxr.allocator import keep_freed_memory, release_periodically

    keep_freed_memory()
    release_periodically()
    from cxr.data.data_source import load_data_source

    work.mkdir(parents=True, exist_ok=True)
    if stage == "listing":
        t0 = time.perf_counter()
        ds = load_data_source(str(db)).dataset
        return {"seconds": time.perf_counter() - t0, "films": len(ds), "disk_mb": 0.0}
    if stage == "cache":
        from cxr.data.pixel_cache import cache_pixels

        ds = load_data_source(str(db)).dataset
        cache = work / f"cache-only-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        cache_pixels(ds, size, cache_dir=cache)
        return {"seconds": time.perf_counter() - t0, "films": len(ds), "disk_mb": _du_mb(cache)}
    if stage == "split":
        from cxr.data.splits import complete_split

        ds = load_data_source(str(db)).dataset
        names, labels = list(ds["file_name"]), list(ds["label"])
        t0 = time.perf_counter()
        complete_split(names, labels, {}, seed=1)
        return {"seconds": time.perf_counter() - t0, "films": len(ds), "disk_mb": 0.0}
    if stage == "train":
        from cxr.training.config import TrainConfig
        from cxr.training.loop import train

        out = work / f"run-{size}"
        cfg = TrainConfig(
            model="logreg",
            data=str(db),
            output_dir=str(out),
            image_size=size,
            epochs=1,
            batch_size=64,
            num_workers=2,
            overwrite_output_dir=True,
            report_to="none",
        )
        t0 = time.perf_counter()
        train(cfg)
        films = sum(json.loads((out / "run_config.json").read_text())["images"].values())
        return {"seconds": time.perf_counter() - t0, "films": films, "disk_mb": _du_mb(out)}
    if stage in ("eval", "predict"):
        model = work / f"run-{size}" / "model"
        if not model.is_dir():
            raise SystemExit("run the train stage first")
        if stage == "eval":
            from cxr.commands.eval import main

            argv = ["--model", str(model), "--data", str(db), "--output-dir", str(work / f"eval-{size}")]
            argv += ["--batch-size", "64"]
        else:
            from cxr.commands.predict import main

            argv = [str(db), "--model", str(model), "--output", str(work / f"predict-{size}.csv")]
            argv += ["--batch-size", "64"]
        t0 = time.perf_counter()
        if main(argv) != 0:
            raise SystemExit(f"{stage} failed")
        films = sum(1 for _ in db.glob("*/*.png"))
        written = work / (f"eval-{size}" if stage == "eval" else f"predict-{size}.csv")
        return {
            "seconds": time.perf_counter() - t0,
            "films": films,
            "disk_mb": _du_mb(written) or written.stat().st_size / 2**20,
        }
    if stage == "cv-setup":
        from cxr.run_folder import CVFolder
        from cxr.training.config import TrainConfig
        from cxr.training.cv import _prepare, _write_folds

        out = CVFolder(work / f"cv-{size}")
        shutil.rmtree(out.root, ignore_errors=True)
        cfg = TrainConfig(model="logreg", data=str(db), output_dir=str(out.root), image_size=size)
        t0 = time.perf_counter()
        prepared = _prepare(out, str(db), 5, 1, cfg)
        _write_folds(out, prepared, 5, 1)
        return {"seconds": time.perf_counter() - t0, "films": len(prepared["labels"]), "disk_mb": _du_mb(out.root)}
    raise SystemExit(f"unknown stage {stage!r}")


def _ratio(value: float, base: Optional[float]) -> str:
    return "–" if not base else f"{value / base:.2f}×"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="Where the synthetic databases and the runs go (reused when complete).")
    p.add_argument("--sample", type=Path, default=Path(DEFAULT_DATA), help="The films to copy (default: the sample).")
    p.add_argument("--sizes", type=int, nargs="+", default=[600, 6000, 21165], help="Sizes for every stage.")
    p.add_argument("--data-only-sizes", type=int, nargs="*", default=[100000], help="Sizes for the data layer only.")
    p.add_argument("--image-size", type=int, action="append", help="Image sides to measure (repeatable; default 64).")
    p.add_argument("--stages", nargs="+", default=[*DATA_STAGES, *MODEL_STAGES], help="Stages to run (default: all).")
    p.add_argument(
        "--repeat-below",
        type=float,
        default=10.0,
        help="Run a stage again, each time in a fresh process, while its runs took fewer seconds than this in all; "
        "the table gives the median time and the largest peak memory (default 10).",
    )
    p.add_argument("--max-runs", type=int, default=5, help="The most runs of one stage at one size (default 5).")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = args.image_size or [64]
    if args.stage:  # a worker: one stage, its JSON last
        print(json.dumps(_stage_worker(args.stage, args.db, sizes[0], args.work)))
        return
    if args.root is None:
        p.error("--root is required")
    if args.max_runs < 1 or args.repeat_below < 0:
        p.error("--max-runs must be at least 1 and --repeat-below not negative")
    for n in (*args.sizes, *args.data_only_sizes):
        if n < SAMPLE_SIZE:
            p.error(f"--sizes {n}: below the sample's {SAMPLE_SIZE} films; a synthetic database grows it")
    check_space(_sample_films(args.sample), args.root, [*args.sizes, *args.data_only_sizes])
    args.root.mkdir(parents=True, exist_ok=True)
    rows: List[List[object]] = []
    results: Dict[tuple, Dict[str, float]] = {}
    plan = [(n, s) for n in args.sizes for s in args.stages] + [
        (n, s) for n in args.data_only_sizes for s in args.stages if s in DATA_STAGES
    ]
    for px in sizes:
        for n, stage in plan:
            db = make_synthetic(args.sample, args.root, n)
            work = args.root / f"work-{n}"
            r = run_repeated(stage, db, px, work, args.repeat_below, args.max_runs)
            results[(px, n, stage)] = r
            print(f"[{n} films, {px}px] {stage}: {r['seconds']:.1f} s, peak {r['peak_anon_mb']:.0f} MB", flush=True)
    for (px, n, stage), r in results.items():
        per_film = 1000 * r["seconds"] / max(r["films"], 1)
        at_6k = results.get((px, 6000, stage))
        at_600 = results.get((px, 600, stage))
        rows.append(
            [
                f"{n:,}",
                px,
                stage,
                r["runs"],
                f"{r['seconds']:.3g}",
                f"{per_film:.3g}",
                _ratio(per_film, None if at_6k is None else 1000 * at_6k["seconds"] / max(at_6k["films"], 1)),
                f"{r['peak_anon_mb']:.0f}",
                _ratio(r["peak_anon_mb"], None if at_600 is None else at_600["peak_anon_mb"]),
                f"{r['disk_mb']:.0f}",
            ]
        )
    print(f"\n{machine()}; synthetic databases made from the sample (cost only, never accuracy)\n")
    print(
        table(
            [
                "films",
                "px",
                "stage",
                "runs",
                "seconds (median)",
                "ms per film",
                "per film vs 6,000",
                "peak anonymous MB",
                "memory vs 600",
                "disk MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
