"""The one decoder of cxr: PNG, JPEG (any mode, 8 or 16 bit) and DICOM, for every path — training,
evaluation, :class:`cxr.CXRClassifier`, the app and Grad-CAM figures.

:func:`open_radiograph` decodes a file (path, bytes or file object) and :func:`load_grayscale` turns
it, or an already decoded image or array, into one 8-bit grey channel; :func:`read_radiograph` adds
the upload checks and warnings the app shows. Only PNG, JPEG and DICOM are decoded (Pillow's other
formats are refused, so no other decoder is ever handed a file); sizes are checked from the header
before any pixel is decoded, so a decompression bomb is refused without allocating it; a multi-frame
DICOM decodes only its first frame. Every refusal is an :class:`ImageInputError` whose message fits a
web page.

Memory is bounded per image: a decoded image is reduced at once to a working image whose longest side is
at most :data:`WORKING_SIDE` (JPEG is decoded reduced, by libjpeg's DCT scaling; a large DICOM frame is
block-averaged before any floating-point copy), so no full-resolution float array is ever made. At most
:data:`HEAVY_DECODE_SLOTS` images above :data:`HEAVY_PIXELS` are decoded at once in a process, and the memory
of each is handed back to the system when it is done (:func:`cxr.allocator.release_freed_memory`).
``bench/upload_memory.py`` measures what an upload costs the app.

Example:
    >>> image, warnings = read_radiograph("chest.dcm")                    # doctest: +SKIP
    >>> image.mode  # doctest: +SKIP
    'L'
"""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.data import image_limits as limits
from cxr.data.dicom import read_dicom
from cxr.data.formats import jpeg_info
from cxr.data.image_limits import (
    DICOM_MAGIC_OFFSET,
    HEAVY_DECODE_SLOTS,
    IMAGE_FORMATS,
    MAX_DICOM_PIXELS,
    MAX_FILE_BYTES,
    MAX_INFLATED_BYTES,
    MAX_JPEG_SCANS,
    MAX_PIXELS,
    MIN_SIDE,
    NOT_AN_IMAGE,
    ROBUST_PERCENTILES,
    UPLOAD_SUFFIXES,
    ImageInputError,
    ImageLike,
    Source,
    check_scans,
    check_size,
    decode_slot,
    reduce_to_working_size,
    released,
    stretch_to_unit,
)

__all__ = [
    "ImageInputError",
    "ImageLike",
    "MIN_SIDE",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_DICOM_PIXELS",
    "HEAVY_DECODE_SLOTS",
    "MAX_JPEG_SCANS",
    "MAX_INFLATED_BYTES",
    "ROBUST_PERCENTILES",
    "IMAGE_FORMATS",
    "UPLOAD_SUFFIXES",
    "open_radiograph",
    "reduce_to_working_size",
    "load_grayscale",
    "to_grayscale",
    "read_radiograph",
    "read_dicom",
    "colourfulness",
    "chest_xray_warnings",
]

_logger = logging.getLogger(__name__)

#: EXIF orientation (tag 0x0112) to the transpose that shows the image upright.
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _is_dicom(fp: BinaryIO, name: str) -> bool:
    if name.lower().endswith((".dcm", ".dicom")):
        return True
    head = fp.read(DICOM_MAGIC_OFFSET + 4)
    fp.seek(0)
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def open_radiograph(source: Source) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file, refusing anything else.

    Args:
        source: a path, the file's bytes or a binary file object.

    Returns:
        The decoded image in its own mode (PNG/JPEG) or mode ``L`` (DICOM), reduced to the working size
        (longest side at most :data:`~cxr.data.image_limits.WORKING_SIDE`).

    Raises:
        ImageInputError: another format, a file too large in pixels (checked before decoding), truncated
            or corrupt data; the message fits a web page.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "") or ""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            fp: BinaryIO = open(source, "rb")
        except OSError as e:
            raise ImageInputError(f"The file could not be read ({e.strerror or e}).") from None
    else:
        fp = source
    try:
        if _is_dicom(fp, str(name)):
            return read_dicom(fp)
        try:
            return released(_decode_png_or_jpeg(fp))
        except UnidentifiedImageError:
            raise ImageInputError(NOT_AN_IMAGE) from None
        except Image.DecompressionBombError as e:
            _logger.info("refused: %s", e)
            raise ImageInputError("The image is too large; it was refused before decoding.") from None
        except (OSError, SyntaxError, ValueError, struct.error) as e:  # Pillow's words name its internals
            _logger.info("image decode failed: %s: %s", type(e).__name__, e)
            raise ImageInputError(
                "The image file is truncated, damaged or not standard. Export it again as PNG or JPEG."
            ) from None
    finally:
        if fp is not source:
            fp.close()


def _decode_png_or_jpeg(fp: BinaryIO) -> Tuple[Image.Image, bool]:
    """The working image of a PNG or JPEG, upright (its EXIF orientation applied), and whether it was heavy to
    decode. A JPEG's scans are counted first (:data:`MAX_JPEG_SCANS`)."""
    start = fp.tell()
    if fp.read(2) == b"\xff\xd8":
        fp.seek(start)
        try:
            scans = jpeg_info(fp).scans
        except (ValueError, struct.error):
            scans = 0  # Pillow's decoder says what is wrong
        check_scans(scans)
    fp.seek(start)
    with Image.open(fp, formats=IMAGE_FORMATS) as im:
        check_size(*im.size)  # from the header, before decoding
        pixels = im.size[0] * im.size[1]
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        with decode_slot(pixels):
            if im.format == "JPEG":  # decoded at 1/2, 1/4 or 1/8 scale where that still covers the working size
                im.draft(im.mode, (limits.WORKING_SIDE, limits.WORKING_SIDE))
            im.load()
            small = reduce_to_working_size(im)
            small = im.copy() if small is im else small
            im.close()  # the full-resolution pixels go now, not whenever the garbage collector reaches them
            if orientation in _UPRIGHT:
                small = small.transpose(_UPRIGHT[orientation])
            return small, pixels > limits.HEAVY_PIXELS


def to_grayscale(image: Image.Image) -> Image.Image:
    """Return one 8-bit luminance channel (PIL mode ``L``) for any PIL image mode.

    Colour modes use ITU-R 601 luma (PIL's ``L`` conversion); alpha is dropped; palette and
    CMYK images go through RGB; 16-bit and float images are stretched linearly to 0..255 between their
    :data:`ROBUST_PERCENTILES` (X-ray detectors rarely use the full 16-bit range, and one hot pixel must not set
    the contrast). An image larger
    than the working size is reduced to it first (:func:`reduce_to_working_size`).

    Args:
        image: a decoded PIL image.

    Returns:
        A PIL image in mode ``L``.
    """
    image = reduce_to_working_size(image)
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.array(image, dtype=np.float64)  # one float copy, worked on in place
        stretch_to_unit(arr, robust=True)
        arr *= 255.0
        np.clip(np.rint(arr, out=arr), 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image.convert("L")


def load_grayscale(image: ImageLike) -> Image.Image:
    """Any radiograph — a PNG/JPEG/DICOM file (path, bytes, file object), a PIL image or an array — as
    one 8-bit luminance channel.

    Args:
        image: a file, a decoded PIL image, or a ``HxW`` / ``HxWxC`` uint8 array.

    Returns:
        A PIL image in mode ``L``.

    Raises:
        ImageInputError: the file is not a decodable PNG, JPEG or DICOM image (see :func:`open_radiograph`).
    """
    if isinstance(image, np.ndarray):
        arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        return to_grayscale(Image.fromarray(arr))
    if isinstance(image, Image.Image):
        return to_grayscale(image)
    return to_grayscale(open_radiograph(image))


def read_radiograph(path: Optional[Union[str, os.PathLike]]) -> Tuple[Image.Image, List[str]]:
    """Open an uploaded file as an image, refusing what cannot be a radiograph.

    Args:
        path: the uploaded file (PNG, JPEG or DICOM); ``None`` for an empty submit.

    Returns:
        ``(image, warnings)``: the grey working image (mode ``L``, as :func:`load_grayscale` gives it) and
        warnings to show beside the predictions (for example, a colour photograph).

    Raises:
        ImageInputError: with a message for the page.
    """
    if path is None or str(path) == "":
        raise ImageInputError("Upload a chest X-ray first (PNG, JPEG or DICOM).")
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(
            "The image is not on the server (uploads are deleted once analysed, a page's copy is kept only for a "
            "while, or it did not arrive): please upload it again."
        )
    size = path.stat().st_size
    if size == 0:
        raise ImageInputError("The uploaded file is empty.")
    if size > MAX_FILE_BYTES:
        raise ImageInputError(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.")
    image = open_radiograph(path)
    return to_grayscale(image), chest_xray_warnings(image)


def colourfulness(image: Image.Image) -> float:
    """Hasler–Süsstrunk colourfulness (0 for grey images, above ~30 for ordinary colour photos)."""
    if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return 0.0
    small = image.convert("RGB")
    small.thumbnail((256, 256))
    rgb = np.asarray(small, dtype=np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def chest_xray_warnings(image: Image.Image) -> List[str]:
    """Visible warnings for images that are plainly not chest radiographs."""
    warnings = []
    if colourfulness(image) > 15:
        warnings.append(
            "This looks like a colour photograph, not a chest X-ray: the models were trained on chest "
            "radiographs only and their output means nothing here."
        )
    w, h = image.size
    if max(w, h) / min(w, h) > 2.5:
        warnings.append(f"The image is {w}×{h}: far from the roughly square shape of a chest X-ray.")
    return warnings
