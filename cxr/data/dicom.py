"""The DICOM reader: a radiograph's first frame as a radiologist's viewer shows it (modality and VOI lookup
tables, ``MONOCHROME1`` inverted), with every size checked from the header before any pixel is decoded and a
deflated dataset inflated in bounded chunks (:mod:`cxr.data.image_limits`)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import struct
import tempfile
import zlib
from typing import BinaryIO, Iterator, Optional, Tuple

import numpy as np
from PIL import Image

from cxr.data import image_limits as limits
from cxr.data.formats import InflateLimitError, inflate_capped, j2k_size, jpeg_info
from cxr.data.image_limits import (
    DAMAGED_HEADER,
    DICOM_MAGIC_OFFSET,
    EXPORT,
    MAX_DICOM_PIXELS,
    MAX_INFLATED_BYTES,
    ImageInputError,
    Source,
    block_mean,
    check_scans,
    check_size,
    decode_slot,
    released,
    stretch_to_unit,
)

__all__ = ["read_dicom"]

_logger = logging.getLogger(__name__)


def read_dicom(source: Source) -> Image.Image:
    """Decode a DICOM radiograph to 8-bit grey, as a radiologist's viewer would show it.

    The modality LUT (rescale slope/intercept) and the VOI LUT or window are applied;
    ``MONOCHROME1`` (white = low values) is inverted; the result is stretched to 0..255 (a film without a
    window between its :data:`ROBUST_PERCENTILES`). A deflated dataset is inflated in bounded chunks
    (:data:`MAX_INFLATED_BYTES`); a JPEG or JPEG 2000 frame is checked against the header's size before it is
    decoded, and decoded reduced. Multi-frame
    files give their first frame, and only that frame is read and decoded; a frame larger than the working
    image is block-averaged to it before the lookup tables are applied.

    Args:
        source: a path, the file's bytes or a binary file object.

    Raises:
        ImageInputError: not DICOM, no pixel data, colour or undecodable pixels.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            try:
                source = stack.enter_context(open(source, "rb"))
            except OSError as e:
                raise ImageInputError(f"The file could not be read ({e.strerror or 'error'}).") from None
        try:
            return released(_read_dicom(stack.enter_context(_plain_dicom(source))))
        except (ImageInputError, MemoryError):
            raise
        except Exception as e:  # a header pydicom reads but whose values make no sense, and the like
            _logger.info("DICOM read failed: %s: %s", type(e).__name__, e)
            raise ImageInputError(DAMAGED_HEADER) from None


@contextlib.contextmanager
def _plain_dicom(fp: BinaryIO) -> Iterator[BinaryIO]:
    """``fp`` itself, or for a deflated DICOM file (transfer syntax "Deflated Explicit VR Little Endian") a
    temporary file holding the same DICOM uncompressed — inflated a chunk at a time, refused past
    :data:`MAX_INFLATED_BYTES` (pydicom would inflate the whole dataset in memory before any check)."""
    from pydicom.filebase import DicomFileLike  # pydicom loads only for a DICOM file
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    try:
        fp.seek(0)
        read_preamble(fp, force=True)
        meta = _read_file_meta_info(fp)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # not DICOM, or a damaged header: dcmread says which
        deflated = False
    if not deflated:
        fp.seek(0)
        yield fp
        return
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as out:
        out.write(b"\0" * DICOM_MAGIC_OFFSET + b"DICM")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        write_file_meta_info(DicomFileLike(out), meta, enforce_standard=False)
        try:
            inflate_capped(fp, out, MAX_INFLATED_BYTES)
        except InflateLimitError:
            raise ImageInputError(
                f"This deflated DICOM file inflates to more than {MAX_INFLATED_BYTES // 2**20} MB, far more than "
                f"a chest radiograph; it was refused while inflating. {EXPORT}"
            ) from None
        except zlib.error:
            raise ImageInputError(f"This deflated DICOM file's compressed data is damaged. {EXPORT}") from None
        out.seek(0)
        yield out


def _header_int(ds, keyword: str, default: int) -> int:
    """A whole-number header value (``default`` when absent or empty), or one sentence saying it is not one."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageInputError(
            f"This DICOM file's header is damaged: {keyword} is not a whole number. {EXPORT}"
        ) from None


def _read_dicom(fp: BinaryIO) -> Tuple[Image.Image, bool]:
    import pydicom  # pydicom loads only for a DICOM file
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        # large values (the pixel data) are left in the file: only the frame used is read, below
        ds = pydicom.dcmread(fp, defer_size=1024)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, struct.error) as e:
        _logger.info("dcmread failed: %s: %s", type(e).__name__, e)
        raise ImageInputError(f"This file is not a readable DICOM file. {EXPORT}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageInputError("This DICOM file has no pixel data (it holds no image).")
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    check_size(cols, rows)
    if _header_int(ds, "SamplesPerPixel", 1) != 1:
        photometric = str(ds.get("PhotometricInterpretation", "")).upper()
        raise ImageInputError(f"This DICOM image is not greyscale ({photometric}); chest radiographs are.")
    frames = _header_int(ds, "NumberOfFrames", 1)
    if frames < 1 or frames * rows * cols > MAX_DICOM_PIXELS:
        raise ImageInputError(
            f"This DICOM file holds {frames} frames of {cols}×{rows} pixels; a chest radiograph is one image. "
            "It was refused before decoding."
        )
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    with decode_slot(rows * cols):
        try:
            arr = _encapsulated_frame(ds, syntax, rows, cols, frames)
            if arr is None:
                fp.seek(0)
                arr = pixel_array(fp, index=0)
        except ImageInputError:
            raise
        except Exception as e:  # missing decoder plugin, truncated data, ...
            compressed = syntax is not None and syntax.is_compressed
            what = f"its compression ({syntax.name})" if compressed else "its pixel data"
            _logger.info("DICOM decode failed: %s: %s", type(e).__name__, e)
            raise ImageInputError(
                f"This DICOM file cannot be decoded here: {what} is not supported or the data is damaged. {EXPORT}"
            ) from None
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if arr.ndim != 2:
            raise ImageInputError(f"This DICOM image is not greyscale ({photometric}); chest radiographs are.")
        # one factor for both sides keeps the shape; never more than the short side holds (a frame decoded
        # reduced is smaller than the header's size)
        factor = min(math.ceil(max(arr.shape) / limits.WORKING_SIDE), *arr.shape)
        if factor > 1:
            arr = block_mean(arr, factor)
        try:
            return _displayed(arr, ds, photometric), rows * cols > limits.HEAVY_PIXELS
        except _DAMAGED_DISPLAY as e:  # lookup tables that do not fit the pixels, a zero window width
            _logger.info("DICOM display failed: %s: %s", type(e).__name__, e)
            raise ImageInputError(
                "This DICOM file's lookup tables or pixel values are damaged. Export it as PNG or as "
                "uncompressed DICOM."
            ) from None


def _encapsulated_frame(ds, syntax, rows: int, cols: int, frames: int) -> Optional[np.ndarray]:
    """The first frame of a DICOM file whose pixel data is JPEG or JPEG 2000, checked before it is decoded: the
    size its own stream claims must be the header's (already within the pixel budget), and a JPEG's scans at
    most :data:`MAX_JPEG_SCANS`. 8-bit JPEG and JPEG 2000 frames are decoded here, reduced while decoding
    (libjpeg's DCT scaling, OpenJPEG's resolution levels); ``None`` for what pydicom decodes instead (RLE,
    lossless JPEG, JPEG-LS, once checked; uncompressed data)."""
    if syntax is None or not syntax.is_encapsulated:
        return None
    from pydicom.encaps import get_frame  # pydicom loads only for a DICOM file

    frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    if frame[:2] == b"\xff\xd8":
        info = jpeg_info(io.BytesIO(frame))
        width, height = info.width, info.height
        check_scans(info.scans)
        ours = info.precision == 8 and not info.progressive
    elif syntax.name.startswith("JPEG 2000"):
        (width, height), ours = j2k_size(frame), True
    else:
        return None
    if (width, height) != (cols, rows):
        raise ImageInputError(
            f"This DICOM file's image data is {width}×{height} pixels, but its header says {cols}×{rows}: the "
            f"file is damaged or crafted. It was refused before decoding. {EXPORT}"
        )
    if not ours or _header_int(ds, "PixelRepresentation", 0) != 0:  # signed pixels: pydicom's decoder
        return None
    with Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (limits.WORKING_SIDE, limits.WORKING_SIDE))
        elif max(width, height) > limits.WORKING_SIDE:  # each resolution level discarded halves both sides
            im.reduce = min(5, int(math.log2(max(width, height) / limits.WORKING_SIDE)))
        im.load()
        arr = np.array(im)
    return arr if arr.ndim == 2 else None


#: What pydicom raises for lookup tables or windows that do not fit the pixels (a short LUT, a zero width):
#: damaged data, said as such; anything else (out of memory) is not the file's fault.
_DAMAGED_DISPLAY = (ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error)


def _displayed(arr: np.ndarray, ds, photometric: str) -> Image.Image:
    """A DICOM frame as a viewer shows it, in 8-bit grey: its lookup tables applied, stretched to 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pydicom loads only for a DICOM file

    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else values
    values = np.array(values, dtype=np.float64)  # one float copy, worked on in place
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    stretch_to_unit(values, robust=not windowed)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, values, out=values)
    values *= 255
    return Image.fromarray(np.rint(values, out=values).astype(np.uint8), mode="L")
