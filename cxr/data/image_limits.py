"""The limits every decode is held to, and the helpers both readers (:mod:`cxr.data.decode` for PNG and JPEG,
:mod:`cxr.data.dicom`) share: sizes checked before decoding, the working size an image is reduced to, the
heavy-decode slots, and the refusal every reader raises (:class:`ImageInputError`)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import BinaryIO, Iterator, Tuple, Union

import numpy as np
from PIL import Image

from cxr.allocator import release_freed_memory
from cxr.errors import CXRError

__all__ = [
    "ImageInputError",
    "Source",
    "ImageLike",
    "MIN_SIDE",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_DICOM_PIXELS",
    "WORKING_SIDE",
    "HEAVY_PIXELS",
    "HEAVY_DECODE_SLOTS",
    "MAX_JPEG_SCANS",
    "MAX_INFLATED_BYTES",
    "ROBUST_PERCENTILES",
    "IMAGE_FORMATS",
    "UPLOAD_SUFFIXES",
    "check_size",
    "check_scans",
    "decode_slot",
    "released",
    "working_size",
    "reduce_to_working_size",
    "block_mean",
    "stretch_to_unit",
]

#: Smallest side accepted (the models see 24 px and more; anything smaller is not a radiograph).
MIN_SIDE = 32
#: Largest image accepted, in pixels (about 8,000 x 8,000; full-field detectors are ~4,300 x 4,300).
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Largest DICOM pixel data, all frames together (only the first frame is decoded, but a file claiming
#: more than this is not a chest radiograph).
MAX_DICOM_PIXELS = 4 * MAX_PIXELS
#: Longest side of the working image: larger images are reduced (box filter) as they are decoded. Every
#: model's input and the app's display are far smaller.
WORKING_SIDE = 2048
#: Images above this many pixels (about 1,400 x 1,400) are "heavy": decoded at most :data:`HEAVY_DECODE_SLOTS`
#: at a time, their memory handed back to the system afterwards.
HEAVY_PIXELS = 2_000_000
HEAVY_DECODE_SLOTS = 2
#: Most scans a JPEG may hold: a progressive JPEG has about 10 (libjpeg's default), and each scan costs a pass
#: over the whole image, so one whose scans repeat thousands of times is refused before decoding.
MAX_JPEG_SCANS = 64
#: Most bytes a deflated DICOM dataset may inflate to: one 16-bit frame of :data:`MAX_PIXELS` and its header.
MAX_INFLATED_BYTES = 2 * MAX_PIXELS + (16 << 20)
#: The only Pillow formats decoded; DICOM has its own reader.
IMAGE_FORMATS = ("PNG", "JPEG")
#: File name endings the app accepts.
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128
NOT_AN_IMAGE = "This file is not an image we can read. Upload a PNG, JPEG or DICOM chest X-ray."
EXPORT = "Export it as PNG or as uncompressed DICOM."
DAMAGED_HEADER = f"This DICOM file's header is damaged or not standard. {EXPORT}"
Source = Union[str, os.PathLike, bytes, BinaryIO]
ImageLike = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

_heavy_slots = threading.BoundedSemaphore(HEAVY_DECODE_SLOTS)


class ImageInputError(CXRError):
    """An image that cannot be used, explained for the person who sent it."""


def check_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageInputError(
            f"The image is {width}×{height} pixels, too small to be a radiograph (at least {MIN_SIDE}×{MIN_SIDE})."
        )
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"The image is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels. It was refused before decoding."
        )


@contextlib.contextmanager
def decode_slot(pixels: int) -> Iterator[None]:
    """Hold one of the heavy-decode slots while an image of ``pixels`` is decoded and reduced; small images
    pass straight through."""
    if pixels <= HEAVY_PIXELS:
        yield
        return
    with _heavy_slots:
        yield


def released(decoded: Tuple[Image.Image, bool]) -> Image.Image:
    """The working image of a decode that returned ``(image, heavy)``; after a heavy one (whose full-resolution
    buffers are gone with the decoder's frame), the freed memory goes back to the system."""
    image, heavy = decoded
    if heavy:
        release_freed_memory()
    return image


def working_size(width: int, height: int) -> Tuple[int, int]:
    scale = WORKING_SIDE / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduce_to_working_size(image: Image.Image) -> Image.Image:
    """``image`` with its longest side at most :data:`WORKING_SIDE` (box filter, mode kept); smaller images
    are returned as they are."""
    size = working_size(*image.size)
    if size == image.size:
        return image
    if image.mode not in (
        "1",
        "L",
        "LA",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I;16",
        "I",
        "F",
    ):
        image = image.convert("I")  # other 16-bit layouts
    return image.resize(size, Image.Resampling.BOX)


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of a 2-D array, a strip of rows at a time (no full-size float
    copy); the result keeps ``arr``'s dtype (rounded), so lookup tables still apply to it."""
    rows, cols = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    out = np.empty((rows // factor, cols // factor), dtype=np.float32)
    strip = max(1, (8 << 20) // (cols * 4 * factor))  # output rows per strip: about 8 MB of float32 input
    for r in range(0, rows // factor, strip):
        block = arr[r * factor : min(rows, (r + strip) * factor), :cols].astype(np.float32)
        out[r : r + block.shape[0] // factor] = block.reshape(-1, factor, cols // factor, factor).mean(axis=(1, 3))
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(out).astype(arr.dtype)
    return out.astype(arr.dtype)


def check_scans(scans: int) -> None:
    if scans > MAX_JPEG_SCANS:
        raise ImageInputError(
            f"This JPEG holds {scans} scans (an ordinary progressive JPEG has about 10, and each is another pass over "
            "the whole image); it was refused before decoding. Export it as baseline JPEG or PNG."
        )


#: The percentiles a film without a window of its own is stretched between: the darkest and brightest 0.01% of
#: its pixels are clipped, so a hot or dead pixel cannot set the contrast of the whole image.
ROBUST_PERCENTILES = (0.01, 99.99)


def stretch_to_unit(values: np.ndarray, robust: bool) -> None:
    """Stretch a float array in place to 0..1: between its own minimum and maximum, or (``robust``) between
    :data:`ROBUST_PERCENTILES`, clipping the few pixels outside."""
    if robust and values.size:
        lo, hi = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES))
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:  # flat, or flat but for a few pixels: fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        values[:] = 0.0
        return
    values -= lo
    values /= hi - lo
    np.clip(values, 0.0, 1.0, out=values)
