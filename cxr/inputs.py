"""Reading an uploaded radiograph safely: PNG, JPEG (any mode, 8 or 16 bit) and DICOM.

:func:`read_radiograph` returns a PIL image and warnings, or raises :class:`ImageInputError`
with a message fit for a web page. Sizes are checked from the header before any pixel is decoded,
so a decompression bomb is refused without allocating it.

Example:
    >>> image, warnings = read_radiograph("chest.dcm")                    # doctest: +SKIP
    >>> image.mode
    'L'
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CXRError

__all__ = [
    "ImageInputError",
    "MIN_SIDE",
    "MAX_PIXELS",
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
_DICOM_MAGIC_OFFSET = 128


class ImageInputError(CXRError):
    """An upload that cannot be used, explained for the person who sent it."""


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        head = f.read(_DICOM_MAGIC_OFFSET + 4)
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


def read_dicom(path: Union[str, os.PathLike]) -> Image.Image:
    """Decode a DICOM radiograph to 8-bit grey, as a radiologist's viewer would show it.

    The modality LUT (rescale slope/intercept) and the VOI LUT or window are applied;
    ``MONOCHROME1`` (white = low values) is inverted; the result is stretched to 0..255. Multi-frame
    files give their first frame.

    Raises:
        ImageInputError: not DICOM, no pixel data, colour or undecodable pixels.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=False)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageInputError(f"This file is not a readable DICOM file ({e}).") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageInputError("This DICOM file has no pixel data (it holds no image).")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(cols, rows)
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder plugin, truncated data, ...
        raise ImageInputError(f"The DICOM pixel data could not be decoded ({type(e).__name__}: {e}).") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
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


def read_radiograph(path: Optional[Union[str, os.PathLike]]) -> Tuple[Image.Image, List[str]]:
    """Open an uploaded file as an image, refusing what cannot be a radiograph.

    Args:
        path: the uploaded file (PNG, JPEG, any PIL format, or DICOM); ``None`` for an empty submit.

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
    if _is_dicom(path):
        image = read_dicom(path)
    else:
        try:
            with Image.open(path) as im:
                _check_size(*im.size)  # from the header, before decoding
                im.load()
                image = im.copy()
        except ImageInputError:
            raise
        except UnidentifiedImageError:
            raise ImageInputError("This file is not an image we can read. Upload a PNG, JPEG or DICOM chest X-ray.") from None
        except Image.DecompressionBombError as e:
            raise ImageInputError(f"The image is too large ({e}); it was refused before decoding.") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageInputError(f"The image file is truncated or corrupt ({e}).") from None
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
