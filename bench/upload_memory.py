"""What one upload costs the running app in memory: the worst inputs it accepts, against an ordinary X-ray.

Starts ``python app.py`` with one model (``--model`` at ``--image-size``, random weights: memory does not
depend on them) and sends it, through ``gradio_client`` and the ``/predict`` endpoint (probabilities and a
Grad-CAM heat map, the most the app does for an image):

- an ordinary chest X-ray from the sample (the baseline);
- the largest accepted 16-bit PNG (``MAX_PIXELS``, a real X-ray scaled up, so it compresses like one);
- the largest accepted JPEG (``MAX_PIXELS``, RGB);
- the largest accepted single-frame DICOM (``MAX_PIXELS``, uncompressed 16-bit);
- a multi-frame DICOM of 2048² frames, as many as fit the upload limit (``MAX_FILE_BYTES``).

Each one at a time, then the four worst at once. The server's peak resident memory is read from the kernel
(``VmHWM``, reset before each step through ``/proc/PID/clear_refs``), its retained memory (``VmRSS``) after
the step. Printed: one table, with the issue's targets beside the numbers — peak growth for any accepted
upload at most 300 MB over an ordinary X-ray's request; four concurrent worst-case uploads at most 1.5 GB
over idle; at most 100 MB retained after they finish.

    python bench/upload_memory.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from app_latency import _rss_kib, _start, _stop
from common import DEFAULT_DATA, free_port, machine, table
from eval_throughput import make_checkpoint

PEAK_TARGET_MB, CONCURRENT_TARGET_MB, RETAINED_TARGET_MB = 300, 1500, 100


def _worst_inputs(folder: Path, xray: Path, side: int, frames: Optional[int]) -> Dict[str, Path]:
    """The largest accepted inputs of each kind, made from a real X-ray scaled to ``side`` x ``side``."""
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    from cxr.data.decode import MAX_FILE_BYTES

    grey = Image.open(xray).convert("L").resize((side, side), Image.Resampling.BILINEAR)
    pixels16 = np.asarray(grey, dtype=np.uint16) * 257
    out = {"16-bit PNG": folder / "largest-16bit.png", "JPEG": folder / "largest.jpg"}
    Image.fromarray(pixels16).save(out["16-bit PNG"], compress_level=1)
    grey.convert("RGB").save(out["JPEG"], quality=95)
    del grey

    def dicom(path: Path, frames: np.ndarray) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ComputedRadiographyImageStorage, generate_uid(), "CR"
        ds.Rows, ds.Columns = frames.shape[-2:]
        if frames.ndim == 3:
            ds.NumberOfFrames = frames.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = frames.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        return path

    out["DICOM, one frame"] = dicom(folder / "largest.dcm", pixels16)
    frame = np.asarray(Image.fromarray(pixels16).resize((2048, 2048), Image.Resampling.BOX), dtype=np.uint16)
    del pixels16
    count = min(frames or MAX_FILE_BYTES, (MAX_FILE_BYTES - 4096) // frame.nbytes)
    out[f"DICOM, {count} frames"] = dicom(folder / "frames.dcm", np.stack([frame] * count))
    return out


def _reset_peak(pid: int) -> None:
    """Set the process's peak resident memory (VmHWM) back to its current resident memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _request(url: str, path: Path, errors: List[str]) -> None:
    from gradio_client import Client, handle_file

    answer, _ = Client(url, verbose=False).predict(
        handle_file(str(path)), "GradCAM", "predicted class", api_name="/predict"
    )
    if answer.get("error"):
        errors.append(f"{path.name}: {answer['error']}")


def _step(pid: int, url: str, paths: List[Path]) -> Tuple[float, float, float]:
    """Send ``paths`` at once; returns resident MB before, the peak during, and after (settled)."""
    before = _rss_kib(pid) / 1024
    _reset_peak(pid)
    errors: List[str] = []
    threads = [threading.Thread(target=_request, args=(url, p, errors)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("the app refused an accepted input: " + "; ".join(errors))
    peak = _rss_kib(pid, "VmHWM") / 1024
    time.sleep(1.0)  # the server's own clean-up after the answer
    return before, peak, _rss_kib(pid) / 1024


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
    args = p.parse_args()
    from cxr.data.decode import MAX_PIXELS

    side = args.side or int(MAX_PIXELS**0.5)
    xray = sorted(Path(args.data).glob("COVID/*.png"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        print(f"making the worst accepted inputs ({side}×{side}) ...", file=sys.stderr, flush=True)
        worst = _worst_inputs(tmp_path, xray, side, args.frames)
        ref = make_checkpoint(args.model, args.image_size, tmp_path)
        port = free_port()
        proc, _ = _start([sys.executable, "app.py", "--models", str(ref), "--port", str(port)], port)
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(3):  # warm: the first requests set up Gradio's and torch's own buffers
                _request(url, xray, [])
            idle = _rss_kib(proc.pid) / 1024
            before, peak, after = _step(proc.pid, url, [xray])
            ordinary = peak - before
            rows = [
                [
                    "ordinary X-ray (sample PNG)",
                    f"{xray.stat().st_size / 2**20:.2f}",
                    f"{ordinary:.0f}",
                    "—",
                    f"{after - before:+.0f}",
                ]
            ]
            for name, path in worst.items():
                before, peak, after = _step(proc.pid, url, [path])
                growth = peak - before - ordinary
                rows.append(
                    [
                        f"{name}, {side}² " if "frames" not in name else f"{name} of 2048²",
                        f"{path.stat().st_size / 2**20:.1f}",
                        f"{peak - before:.0f}",
                        f"{growth:+.0f} {'✓' if growth <= PEAK_TARGET_MB else '✗'} (≤ {PEAK_TARGET_MB})",
                        f"{after - before:+.0f}",
                    ]
                )
            _, peak, after = _step(proc.pid, url, list(worst.values()))
            together = peak - idle
            retained = after - idle
            rows.append(
                [
                    "the four at once",
                    f"{sum(q.stat().st_size for q in worst.values()) / 2**20:.1f}",
                    f"{together:.0f} over idle {'✓' if together <= CONCURRENT_TARGET_MB else '✗'} "
                    f"(≤ {CONCURRENT_TARGET_MB})",
                    "—",
                    f"{retained:+.0f} over idle {'✓' if retained <= RETAINED_TARGET_MB else '✗'} "
                    f"(≤ {RETAINED_TARGET_MB})",
                ]
            )
        finally:
            _stop(proc)
    print(
        f"\n{machine()}; app: {args.model} at {args.image_size} px, /predict (probabilities + Grad-CAM); "
        f"idle resident memory {idle:.0f} MB\n"
    )
    print(
        table(
            ["upload", "file MB", "peak growth MB", "over the ordinary request MB", "retained MB"],
            rows,
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
