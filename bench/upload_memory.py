"""What one upload costs the running app in memory and CPU: the worst inputs it accepts and the hostile files that
``tests/hostile.py`` builds, against an ordinary X-ray; and how long an ordinary request waits while heavy ones run.

Starts ``python app.py`` with one model (``--model`` at ``--image-size``, random weights: cost does not depend on
them) and sends it, through ``gradio_client`` and the ``/predict`` endpoint (probabilities and a Grad-CAM heat
map, the most the app does for an image):

- an ordinary chest X-ray from the sample (the baseline);
- the largest accepted input of each kind, made from a real X-ray scaled to ``MAX_PIXELS``: 16-bit PNG, JPEG,
  single-frame DICOM (uncompressed 16-bit), and a multi-frame DICOM of 2048² frames filling the upload limit;
- films stored unusually (accepted): a valid deflated DICOM, a phone JPEG stored sideways (EXIF orientation),
  a 12-bit PNG with one hot pixel;
- hostile files (refused, each with one sentence): a deflated DICOM of 1.1 MB inflating to 1 GiB, a progressive
  JPEG of 8000² whose last scan is repeated 2,000 times, JPEG 2000 (10000²) and JPEG (12000²) frames in DICOMs
  whose headers say 64², damaged DICOM headers, a PNG text-chunk bomb (builders: ``tests/hostile.py``).

Each one at a time, then the four worst accepted at once, then four hostile files at once. The server's peak
resident memory is read from the kernel (``VmHWM``, reset before each step through ``/proc/PID/clear_refs``),
its retained memory (``VmRSS``) after the step, its CPU seconds (user + system, all threads) from
``/proc/PID/stat``. Last, an ordinary ``/classify`` is timed idle and while the four worst accepted uploads run.

Printed: two tables, with the targets beside the numbers — peak growth for any upload at most 300 MB
over an ordinary X-ray's request; at most 10 CPU seconds for any accepted upload; four at once at most 1.5 GB
over idle; at most 100 MB retained after they finish; the ordinary request during four heavy ones within 2× its
idle time plus one heavy request's time alone.

    python bench/upload_memory.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from app_latency import _start, _stop
from common import DEFAULT_DATA, REPO, answer_client, free_port, machine, status_kib, table
from eval_throughput import make_checkpoint

sys.path.insert(0, str(REPO / "tests"))
from hostile import (  # noqa: E402  (the tests' builders, at full size)
    damaged_dicom,
    deflated_dicom,
    dicom_dataset,
    dicom_with_frame,
    exif_rotated_jpeg,
    hot_pixel_png,
    repeated_scan_jpeg,
    save_dicom,
    text_chunk_bomb_png,
)

PEAK_TARGET_MB, CONCURRENT_TARGET_MB, RETAINED_TARGET_MB, CPU_TARGET_S = 300, 1500, 100, 10


def _worst_inputs(folder: Path, xray: Path, side: int, frames: Optional[int]) -> Dict[str, Path]:
    """The largest accepted inputs of each kind, made from a real X-ray scaled to ``side`` x ``side``."""
    from PIL import Image

    from cxr.data.decode import MAX_FILE_BYTES

    grey = Image.open(xray).convert("L").resize((side, side), Image.Resampling.BILINEAR)
    pixels16 = np.asarray(grey, dtype=np.uint16) * 257
    out = {f"16-bit PNG, {side}²": folder / "largest-16bit.png", f"JPEG, {side}²": folder / "largest.jpg"}
    Image.fromarray(pixels16).save(out[f"16-bit PNG, {side}²"], compress_level=1)
    grey.convert("RGB").save(out[f"JPEG, {side}²"], quality=95)
    del grey
    out[f"DICOM, one frame, {side}²"] = save_dicom(dicom_dataset(pixels16), folder / "largest.dcm")
    frame = np.asarray(Image.fromarray(pixels16).resize((2048, 2048), Image.Resampling.BOX), dtype=np.uint16)
    del pixels16
    count = min(frames or MAX_FILE_BYTES, (MAX_FILE_BYTES - 4096) // frame.nbytes)
    out[f"DICOM, {count} frames of 2048²"] = save_dicom(dicom_dataset(np.stack([frame] * count)), folder / "frames.dcm")
    return out


def _unusual_inputs(folder: Path, xray: Path) -> Dict[str, Path]:
    """Films stored unusually, which the app accepts."""
    from PIL import Image

    grey = Image.open(xray).convert("L")
    return {
        "valid deflated DICOM": deflated_dicom(folder / "deflated.dcm", np.asarray(grey, dtype=np.uint16) * 16),
        "phone JPEG, EXIF orientation 8": exif_rotated_jpeg(grey, folder / "phone.jpg"),
        "12-bit PNG, one hot pixel": hot_pixel_png(grey, folder / "hot.png"),
    }


def _hostile_inputs(folder: Path, xray: Path) -> Dict[str, Path]:
    """The hostile files ``tests/hostile.py`` builds, at full size."""
    from PIL import Image

    grey = Image.open(xray).convert("L")
    pixels16 = np.asarray(grey, dtype=np.uint16) * 16
    scans = folder / "scans.jpg"
    scans.write_bytes(repeated_scan_jpeg(Image.new("L", (8000, 8000), 128), 2000))
    return {
        "deflated DICOM inflating to 1 GiB": deflated_dicom(folder / "bomb.dcm", pixels16, padding_bytes=1 << 30),
        "progressive JPEG 8000², last scan ×2000": scans,
        "JPEG 2000 frame 10000², header 64²": dicom_with_frame(
            folder / "j2k.dcm", Image.new("L", (10000, 10000), 128), "JPEG2000", (64, 64)
        ),
        "JPEG frame 12000², header 64²": dicom_with_frame(
            folder / "jpeg.dcm", Image.new("L", (12000, 12000), 128), "JPEG", (64, 64)
        ),
        'DICOM NumberOfFrames "ab"': damaged_dicom(folder / "frames-ab.dcm", pixels16, "NumberOfFrames"),
        "DICOM Rows given twice": damaged_dicom(folder / "rows-twice.dcm", pixels16, "Rows"),
        "PNG text-chunk bomb": text_chunk_bomb_png(grey, folder / "text.png"),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reset_peak(pid: int) -> None:
    """Set the process's peak resident memory (VmHWM) back to its current resident memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _request(url: str, path: Path, answers: Dict[str, dict], api: str = "/predict") -> None:
    from gradio_client import handle_file

    client = answer_client(url)
    if api == "/predict":
        answer, _ = client.predict(handle_file(str(path)), "GradCAM", "predicted class", api_name=api)
    else:
        answer = client.predict(handle_file(str(path)), api_name=api)
    answers[str(path)] = answer


def _step(pid: int, url: str, paths: List[Path]) -> Tuple[float, float, float, float, List[dict]]:
    """Send ``paths`` at once; returns resident MB before, the peak during, after (settled), the server's CPU
    seconds, and the answers."""
    before = status_kib(pid) / 1024
    _reset_peak(pid)
    cpu = _cpu_seconds(pid)
    answers: Dict[str, dict] = {}
    threads = [threading.Thread(target=_request, args=(url, p, answers)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak, cpu = status_kib(pid, "VmHWM") / 1024, _cpu_seconds(pid) - cpu
    time.sleep(1.0)  # the server's own clean-up after the answer
    return before, peak, status_kib(pid) / 1024, cpu, [answers.get(str(p), {"error": "no answer"}) for p in paths]


def _said(answer: dict) -> str:
    error = answer.get("error")
    if not error:
        probs = next(iter(answer["models"].values())).get("probabilities") or {}
        return f"result ({max(probs, key=probs.get)})" if probs else "result"
    return f"refused: “{error if len(error) <= 60 else error[:57] + '…'}”"


def _timed_classify(url: str, path: Path) -> float:
    start = time.perf_counter()
    answers: Dict[str, dict] = {}
    _request(url, path, answers, api="/classify")
    assert not answers[str(path)].get("error"), answers
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="Kaggle-layout folder of X-rays (default: the sample).")
    p.add_argument("--model", default="tf_efficientnet_lite0", help="The app's model (random weights).")
    p.add_argument("--image-size", type=int, default=224, help="The model's input side.")
    p.add_argument(
        "--side",
        type=int,
        default=None,
        help="Side of the square worst-case images (default: the largest the app accepts, from MAX_PIXELS).",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="Frames of the multi-frame DICOM (default: as many 2048² frames as the upload limit allows).",
    )
    p.add_argument(
        "--concurrency", type=int, default=2, help="app.py --concurrency: requests processed at once (default: 2)."
    )
    args = p.parse_args()
    from cxr.data.decode import MAX_PIXELS

    side = args.side or int(MAX_PIXELS**0.5)
    xray = sorted(Path(args.data).glob("COVID/*.png"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        print(f"making the inputs ({side}×{side} for the worst accepted) ...", file=sys.stderr, flush=True)
        worst = _worst_inputs(tmp_path, xray, side, args.frames)
        unusual = _unusual_inputs(tmp_path, xray)
        hostile = _hostile_inputs(tmp_path, xray)
        ref = make_checkpoint(args.model, args.image_size, tmp_path)
        port = free_port()
        cmd = [sys.executable, "app.py", "--models", str(ref), "--port", str(port)]
        proc, _ = _start(cmd + ["--concurrency", str(args.concurrency)], port)
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(3):  # warm: the first requests set up Gradio's and torch's own buffers
                _request(url, xray, {})
            idle = status_kib(proc.pid) / 1024
            before, peak, after, cpu, (answer,) = _step(proc.pid, url, [xray])
            ordinary, rows, alone = peak - before, [], {}
            rows.append(
                [
                    "ordinary X-ray (sample PNG)",
                    "0.03",
                    _said(answer),
                    f"{cpu:.1f}",
                    f"{ordinary:.0f}",
                    "—",
                    f"{after - before:+.0f}",
                ]
            )
            for name, path in [*worst.items(), *unusual.items(), *hostile.items()]:
                print(f"  {name} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                before, peak, after, cpu, (answer,) = _step(proc.pid, url, [path])
                alone[name] = time.perf_counter() - t0 - 1.0
                accepted = not answer.get("error")
                if accepted != (name not in hostile):
                    raise SystemExit(f"{name}: expected {'a refusal' if accepted else 'a result'}, got {answer}")
                growth = peak - before - ordinary
                rows.append(
                    [
                        name,
                        f"{path.stat().st_size / 2**20:.2f}",
                        _said(answer),
                        f"{cpu:.1f} {'✓' if cpu <= CPU_TARGET_S else '✗'}",
                        f"{peak - before:.0f}",
                        f"{growth:+.0f} {'✓' if growth <= PEAK_TARGET_MB else '✗'}",
                        f"{after - before:+.0f}",
                    ]
                )
            for label, group in (("the four worst accepted at once", worst), ("four hostile files at once", hostile)):
                paths = list(group.values())[:4]
                _, peak, after, cpu, _ = _step(proc.pid, url, paths)
                together, retained = peak - idle, after - idle
                rows.append(
                    [
                        label,
                        f"{sum(q.stat().st_size for q in paths) / 2**20:.1f}",
                        "—",
                        f"{cpu:.1f}",
                        f"{together:.0f} over idle {'✓' if together <= CONCURRENT_TARGET_MB else '✗'} "
                        f"(≤ {CONCURRENT_TARGET_MB})",
                        "—",
                        f"{retained:+.0f} over idle {'✓' if retained <= RETAINED_TARGET_MB else '✗'} "
                        f"(≤ {RETAINED_TARGET_MB})",
                    ]
                )
            idle_s = statistics.median(_timed_classify(url, xray) for _ in range(5))
            heavy = list(worst.values())
            threads = [threading.Thread(target=_request, args=(url, q, {})) for q in heavy]
            for t in threads:
                t.start()
            time.sleep(0.5)  # the heavy requests are in the queue first
            during_s = _timed_classify(url, xray)
            for t in threads:
                t.join()
            slowest = max(alone[n] for n in worst)
            bound = 2 * idle_s + slowest
            waits = [
                ["idle (median of 5)", f"{idle_s:.2f}", "—"],
                [
                    f"while the {len(heavy)} worst accepted uploads run",
                    f"{during_s:.2f}",
                    f"{'✓' if during_s <= bound else '✗'} (≤ 2 × {idle_s:.2f} + {slowest:.2f} = {bound:.2f})",
                ],
            ]
        finally:
            _stop(proc)
    print(
        f"\n{machine()}; app: {args.model} at {args.image_size} px, --concurrency {args.concurrency}, /predict "
        f"(probabilities + Grad-CAM); idle resident memory {idle:.0f} MB\n"
    )
    print(
        table(
            [
                "upload",
                "file MB",
                "answer",
                f"CPU s (≤ {CPU_TARGET_S})",
                "peak growth MB",
                f"over the ordinary request MB (≤ {PEAK_TARGET_MB})",
                "retained MB",
            ],
            rows,
        )
    )
    print("\nAn ordinary /classify (sample PNG), seconds:\n")
    print(table(["when", "seconds", "target"], waits))


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
