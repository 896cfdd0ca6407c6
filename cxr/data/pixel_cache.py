"""The resized-pixel cache: every image decoded once, converted to grey and resized to the training size with
:meth:`PreprocessConfig.pixels` (the same call evaluation uses), stored as uint8 in an Arrow cache file keyed by
the files, the size and the preprocessing version."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple

import datasets
import numpy as np

from cxr.data.folders import MAX_LISTED
from cxr.data.preprocessing import PREPROCESS_VERSION, PreprocessConfig
from cxr.errors import CXRError

__all__ = ["default_cache_dir", "PixelCacheResult", "cache_pixels", "writer_batch_size", "WRITER_BATCH_BYTES"]

_logger = logging.getLogger(__name__)

#: Bytes of pixels each decoding process holds before it writes them to the cache file. ``datasets.map`` buffers
#: ``writer_batch_size`` rows (1,000 by default: 50 MB at 224 px, in several copies while Arrow converts them), so
#: the buffer is sized by bytes: the same at 600 films as at 100,000, and at every image size.
WRITER_BATCH_BYTES = 8 * 2**20


def default_cache_dir() -> Path:
    """Where resized pixels are cached unless ``--cache-dir`` says otherwise: ``$CXR_CACHE_DIR`` as it is
    now (read at each use, not at import), else ``~/.cache/cxr``."""
    return Path(os.environ.get("CXR_CACHE_DIR") or Path.home() / ".cache" / "cxr")


@dataclasses.dataclass
class PixelCacheResult:
    """Output of :func:`cache_pixels`.

    Attributes:
        dataset: the good images, with an extra ``pixels`` column (uint8, ``size x size``).
        bad: ``(file_name, error)`` for every image that could not be decoded.
    """

    dataset: datasets.Dataset
    bad: List[Tuple[str, str]]


def _decode_fn(image_size: int, clahe: bool):
    prep = PreprocessConfig(image_size=image_size, in_chans=1, mean=(0.0,), std=(1.0,), clahe=clahe)

    def fn(example):
        img = example["image"]
        src = img["bytes"] if img.get("bytes") else img["path"]
        try:
            pixels = prep.pixels(src)  # PNG, JPEG or DICOM, by cxr.data.decode like every other path
            error = ""
        except Exception as e:  # any decoder failure is reported with the file's name
            pixels = np.zeros((image_size, image_size), dtype=np.uint8)
            error = f"{type(e).__name__}: {e}"
        return {"pixels": pixels, "decode_error": error}

    return fn


def cache_pixels(
    ds: datasets.Dataset,
    image_size: int,
    cache_dir: Optional[os.PathLike] = None,
    num_proc: Optional[int] = None,
    skip_bad_images: bool = False,
    clahe: bool = False,
) -> PixelCacheResult:
    """Decode, grey and resize every image once, caching the pixels on disk.

    A second call with the same files (names, sizes, modification times) and size reads the
    cache instead of decoding again.

    Args:
        ds: a dataset from :func:`load_radiographs`.
        image_size: side length to resize to.
        cache_dir: folder for the Arrow cache (default :func:`default_cache_dir`).
        num_proc: decoding processes (default: CPU count, at most one per 200 images).
        skip_bad_images: drop undecodable images instead of raising.
        clahe: apply CLAHE before resizing (see :class:`PreprocessConfig`).

    Returns:
        A :class:`PixelCacheResult`.

    Raises:
        CXRError: some images could not be decoded and ``skip_bad_images`` is false, or
            skipping them left a class empty.
    """
    cache_file = _pixel_cache_file(ds, image_size, clahe, Path(cache_dir or default_cache_dir()))
    if num_proc is None:
        num_proc = max(1, min(os.cpu_count() or 1, len(ds) // 200))
    features = ds.features.copy()
    features["image"] = datasets.Image(decode=False)
    features["pixels"] = datasets.Array2D(shape=(image_size, image_size), dtype="uint8")
    features["decode_error"] = datasets.Value("string")
    mapped = ds.cast_column("image", datasets.Image(decode=False)).map(
        _decode_fn(image_size, clahe),
        features=features,
        cache_file_name=str(cache_file),
        load_from_cache_file=True,
        num_proc=num_proc if num_proc > 1 else None,
        writer_batch_size=writer_batch_size(image_size),
        desc=f"Decoding and resizing to {image_size}px (cached)",
    )
    mapped, bad = _drop_unreadable(mapped, skip_bad_images)
    return PixelCacheResult(
        dataset=mapped.with_format("numpy", columns=["pixels", "label"], output_all_columns=True), bad=bad
    )


def writer_batch_size(image_size: int) -> int:
    """Rows a decoding process buffers before writing: :data:`WRITER_BATCH_BYTES` of pixels, 16 to 1,000 rows."""
    return max(16, min(1000, WRITER_BATCH_BYTES // (image_size * image_size)))


def _pixel_cache_file(ds: datasets.Dataset, image_size: int, clahe: bool, cache_dir: Path) -> Path:
    """The cache file of these files (names, sizes, modification times) with these labels and class names (the
    cache keeps the label column: a folder scored against another model's classes labels its films otherwise) at this
    size and preprocessing version."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    classes = "\0".join(ds.features["label"].names)
    h = hashlib.sha256(f"v{PREPROCESS_VERSION}:{image_size}:clahe={clahe}:classes={classes}".encode())
    for name, stat, label in zip(ds["file_name"], ds["file_stat"], ds["label"]):
        h.update(f"{name}\0{stat}\0{label}\n".encode())
    return cache_dir / f"pixels-{image_size}{'-clahe' if clahe else ''}-{h.hexdigest()[:20]}.arrow"


def _drop_unreadable(mapped: datasets.Dataset, skip: bool) -> Tuple[datasets.Dataset, List[Tuple[str, str]]]:
    """The decoded images without the unreadable ones, and those as ``(file, error)``; an error naming them
    unless ``skip``, or when skipping leaves a class empty."""
    errors = mapped["decode_error"]
    bad_idx = [i for i, e in enumerate(errors) if e]
    bad = [(mapped[i]["file_name"], errors[i]) for i in bad_idx]
    if bad and not skip:
        listed = "\n".join(f"  {n}: {e}" for n, e in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise CXRError(
            f"{len(bad)} file(s) in the data are not readable images:\n{listed}{more}\n"
            "Remove them, or pass --skip-bad-images to skip and count them."
        )
    if bad:
        _logger.warning("skipping %d unreadable image(s): %s", len(bad), ", ".join(n for n, _ in bad[:MAX_LISTED]))
        bad_set = set(bad_idx)
        mapped = mapped.select([i for i in range(len(mapped)) if i not in bad_set])
        names = mapped.features["label"].names
        counts = np.bincount(np.asarray(mapped["label"], dtype=np.int64), minlength=len(names))
        empty = [names[i] for i, c in enumerate(counts) if c == 0]
        if empty:
            raise CXRError(f"after skipping unreadable images, class(es) with no images: {', '.join(empty)}")
    return mapped, bad
