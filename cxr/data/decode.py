"""The one decoder of cxr: PNG, JPEG (any mode, 8 or 16 bit) and DICOM, for every path — training,
evaluation, :class:`cxr.CXRClassifier`, the app and Grad-CAM figures.

:func:`open_radiograph` decodes a file (path, bytes or file object) and :func:`load_grayscale` turns
it, or an already decoded image or array, into one 8-bit grey channel; :func:`read_radiograph` adds
the upload checks and warnings the app shows. Only PNG, JPEG and DICOM are decoded (Pillow's other
formats are refused, so no other decoder is ever handed a file); sizes are checked from the header
before any pixel is decoded, so a decompression bomb is refused without allocating it; a multi-frame
DICOM decodes only its first frame. Every refusal is an :class:`ImageInputError` whose message fits a
web page.

Example:
    >>> image, warnings = read_radiograph("chest.dcm")                    # doctest: +SKIP
    >>> image.mode  # doctest: +SKIP
    'L'
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import BinaryIO, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import CXRError

__all__ = [
    "ImageInputError",
    "MIN_SIDE",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "IMAGE_FORMATS",
    "UPLOAD_SUFFIXES",
    "open_radiograph",
    "load_grayscale",
    "to_grayscale",
    "read_radiograph",
    "read_dicom",
    "colourfulness",
    "chest_xray_warnings",
]

_logger = logging.getLogger(__name__)

#: Smallest side accepted (the models see 24 px and more; anything smaller is not a radiograph).
MIN_SIDE = 32
#: Largest image accepted, in pixels (about 8,000 x 8,000; full-field detectors are ~4,300 x 4,300).
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 200 * 1024 * 1024
#: The only Pillow formats decoded; DICOM has its own reader.
IMAGE_FORMATS = ("PNG", "JPEG")
#: File name endings the app accepts.
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128
_NOT_AN_IMAGE = "This file is not an image we can read. Upload a PNG, JPEG or DICOM chest X-ray."

Source = Union[str, os.PathLike, bytes, BinaryIO]
ImageLike = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]


class ImageInputError(CXRError):
    """An image that cannot be used, explained for the person who sent it."""


def _is_dicom(fp: BinaryIO, name: str) -> bool:
    if name.lower().endswith((".dcm", ".dicom")):
        return True
    head = fp.read(_DICOM_MAGIC_OFFSET + 4)
    fp.seek(0)
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def _check_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageInputError(
            f"The image is {width}×{height} pixels, too small to be a radiograph (at least {MIN_SIDE}×{MIN_SIDE})."
        )
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"The image is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels. It was refused before decoding."
        )


def read_dicom(source: Source) -> Image.Image:
    """Decode a DICOM radiograph to 8-bit grey, as a radiologist's viewer would show it.

    The modality LUT (rescale slope/intercept) and the VOI LUT or window are applied;
    ``MONOCHROME1`` (white = low values) is inverted; the result is stretched to 0..255. Multi-frame
    files give their first frame, and only that frame is decoded.

    Args:
        source: a path, the file's bytes or a binary file object.

    Raises:
        ImageInputError: not DICOM, no pixel data, colour or undecodable pixels.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source if not isinstance(source, os.PathLike) else str(source))
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError) as e:
        raise ImageInputError(f"This file is not a readable DICOM file ({e}).") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageInputError("This DICOM file has no pixel data (it holds no image).")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(cols, rows)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        photometric = str(ds.get("PhotometricInterpretation", "")).upper()
        raise ImageInputError(f"This DICOM image is not greyscale ({photometric}); chest radiographs are.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        arr = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as e:  # missing decoder plugin, truncated data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f"its compression ({syntax.name})" if syntax is not None and syntax.is_compressed else "its pixel data"
        _logger.info("DICOM decode failed: %s: %s", type(e).__name__, e)
        raise ImageInputError(
            f"This DICOM file cannot be decoded here: {what} is not supported or the data is "
            "damaged. Export it as PNG or as uncompressed DICOM."
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim != 2:
        raise ImageInputError(f"This DICOM image is not greyscale ({photometric}); chest radiographs are.")
    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else values
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="L")


def open_radiograph(source: Source) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file, refusing anything else.

    Args:
        source: a path, the file's bytes or a binary file object.

    Returns:
        The decoded image in its own mode (PNG/JPEG) or mode ``L`` (DICOM).

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
            with Image.open(fp, formats=IMAGE_FORMATS) as im:
                _check_size(*im.size)  # from the header, before decoding
                im.load()
                return im.copy()
        except UnidentifiedImageError:
            raise ImageInputError(_NOT_AN_IMAGE) from None
        except Image.DecompressionBombError as e:
            raise ImageInputError(f"The image is too large ({e}); it was refused before decoding.") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageInputError(f"The image file is truncated or corrupt ({e}).") from None
    finally:
        if fp is not source:
            fp.close()


def to_grayscale(image: Image.Image) -> Image.Image:
    """Return one 8-bit luminance channel (PIL mode ``L``) for any PIL image mode.

    Colour modes use ITU-R 601 luma (PIL's ``L`` conversion); alpha is dropped; palette and
    CMYK images go through RGB; 16-bit and float images are stretched linearly from their own
    minimum and maximum to 0..255 (X-ray detectors rarely use the full 16-bit range).

    Args:
        image: a decoded PIL image.

    Returns:
        A PIL image in mode ``L``.
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
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
        ``(image, warnings)``: the decoded image (its own mode; DICOM as ``L``) and warnings to show
        beside the predictions (for example, a colour photograph).

    Raises:
        ImageInputError: with a message for the page.
    """
    if path is None or str(path) == "":
        raise ImageInputError("Upload a chest X-ray first (PNG, JPEG or DICOM).")
    path = Path(path)
    if not path.is_file():
        raise ImageInputError("The upload did not arrive; please try again.")
    size = path.stat().st_size
    if size == 0:
        raise ImageInputError("The uploaded file is empty.")
    if size > MAX_FILE_BYTES:
        raise ImageInputError(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.")
    image = open_radiograph(path)
    return image, chest_xray_warnings(image)


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
