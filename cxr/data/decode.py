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

import contextlib
import io
import logging
import math
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.allocator import release_freed_memory
from cxr.data.formats import InflateLimitError, inflate_capped, j2k_size, jpeg_info
from cxr.errors import CXRError

__all__ = [
    "ImageInputError",
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
_heavy_slots = threading.BoundedSemaphore(HEAVY_DECODE_SLOTS)
#: Most scans a JPEG may hold: a progressive JPEG has about 10 (libjpeg's default), and each scan costs a pass
#: over the whole image, so one whose scans repeat thousands of times is refused before decoding.
MAX_JPEG_SCANS = 64
#: Most bytes a deflated DICOM dataset may inflate to: one 16-bit frame of :data:`MAX_PIXELS` and its header.
MAX_INFLATED_BYTES = 2 * MAX_PIXELS + (16 << 20)
#: The only Pillow formats decoded; DICOM has its own reader.
IMAGE_FORMATS = ("PNG", "JPEG")
#: File name endings the app accepts.
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128
_NOT_AN_IMAGE = "This file is not an image we can read. Upload a PNG, JPEG or DICOM chest X-ray."
_EXPORT = "Export it as PNG or as uncompressed DICOM."
_DAMAGED_HEADER = f"This DICOM file's header is damaged or not standard. {_EXPORT}"
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


@contextlib.contextmanager
def _decode_slot(pixels: int) -> Iterator[None]:
    """Hold one of the heavy-decode slots while an image of ``pixels`` is decoded and reduced; small images
    pass straight through."""
    if pixels <= HEAVY_PIXELS:
        yield
        return
    with _heavy_slots:
        yield


def _released(decoded: Tuple[Image.Image, bool]) -> Image.Image:
    """The working image of a decode that returned ``(image, heavy)``; after a heavy one (whose full-resolution
    buffers are gone with the decoder's frame), the freed memory goes back to the system."""
    image, heavy = decoded
    if heavy:
        release_freed_memory()
    return image


def _working_size(width: int, height: int) -> Tuple[int, int]:
    scale = WORKING_SIDE / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduce_to_working_size(image: Image.Image) -> Image.Image:
    """``image`` with its longest side at most :data:`WORKING_SIDE` (box filter, mode kept); smaller images
    are returned as they are."""
    size = _working_size(*image.size)
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


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
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
            return _released(_read_dicom(stack.enter_context(_plain_dicom(source))))
        except (ImageInputError, MemoryError):
            raise
        except Exception as e:  # a header pydicom reads but whose values make no sense, and the like
            _logger.info("DICOM read failed: %s: %s", type(e).__name__, e)
            raise ImageInputError(_DAMAGED_HEADER) from None


@contextlib.contextmanager
def _plain_dicom(fp: BinaryIO) -> Iterator[BinaryIO]:
    """``fp`` itself, or for a deflated DICOM file (transfer syntax "Deflated Explicit VR Little Endian") a
    temporary file holding the same DICOM uncompressed — inflated a chunk at a time, refused past
    :data:`MAX_INFLATED_BYTES` (pydicom would inflate the whole dataset in memory before any check)."""
    from pydicom.filebase import DicomFileLike
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
        out.write(b"\0" * _DICOM_MAGIC_OFFSET + b"DICM")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        write_file_meta_info(DicomFileLike(out), meta, enforce_standard=False)
        try:
            inflate_capped(fp, out, MAX_INFLATED_BYTES)
        except InflateLimitError:
            raise ImageInputError(
                f"This deflated DICOM file inflates to more than {MAX_INFLATED_BYTES // 2**20} MB, far more than "
                f"a chest radiograph; it was refused while inflating. {_EXPORT}"
            ) from None
        except zlib.error:
            raise ImageInputError(f"This deflated DICOM file's compressed data is damaged. {_EXPORT}") from None
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
            f"This DICOM file's header is damaged: {keyword} is not a whole number. {_EXPORT}"
        ) from None


def _read_dicom(fp: BinaryIO) -> Tuple[Image.Image, bool]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        # large values (the pixel data) are left in the file: only the frame used is read, below
        ds = pydicom.dcmread(fp, defer_size=1024)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, struct.error) as e:
        _logger.info("dcmread failed: %s: %s", type(e).__name__, e)
        raise ImageInputError(f"This file is not a readable DICOM file. {_EXPORT}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageInputError("This DICOM file has no pixel data (it holds no image).")
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    _check_size(cols, rows)
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
    with _decode_slot(rows * cols):
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
                f"This DICOM file cannot be decoded here: {what} is not supported or the data is damaged. {_EXPORT}"
            ) from None
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if arr.ndim != 2:
            raise ImageInputError(f"This DICOM image is not greyscale ({photometric}); chest radiographs are.")
        # one factor for both sides keeps the shape; never more than the short side holds (a frame decoded
        # reduced is smaller than the header's size)
        factor = min(math.ceil(max(arr.shape) / WORKING_SIDE), *arr.shape)
        if factor > 1:
            arr = _block_mean(arr, factor)
        try:
            return _displayed(arr, ds, photometric), rows * cols > HEAVY_PIXELS
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
    from pydicom.encaps import get_frame

    frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    if frame[:2] == b"\xff\xd8":
        info = jpeg_info(io.BytesIO(frame))
        width, height = info.width, info.height
        _check_scans(info.scans)
        ours = info.precision == 8 and not info.progressive
    elif syntax.name.startswith("JPEG 2000"):
        (width, height), ours = j2k_size(frame), True
    else:
        return None
    if (width, height) != (cols, rows):
        raise ImageInputError(
            f"This DICOM file's image data is {width}×{height} pixels, but its header says {cols}×{rows}: the "
            f"file is damaged or crafted. It was refused before decoding. {_EXPORT}"
        )
    if not ours or _header_int(ds, "PixelRepresentation", 0) != 0:  # signed pixels: pydicom's decoder
        return None
    with Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (WORKING_SIDE, WORKING_SIDE))
        elif max(width, height) > WORKING_SIDE:  # each resolution level discarded halves both sides
            im.reduce = min(5, int(math.log2(max(width, height) / WORKING_SIDE)))
        im.load()
        arr = np.array(im)
    return arr if arr.ndim == 2 else None


def _check_scans(scans: int) -> None:
    if scans > MAX_JPEG_SCANS:
        raise ImageInputError(
            f"This JPEG holds {scans} scans (an ordinary progressive JPEG has about 10, and each is another pass over "
            "the whole image); it was refused before decoding. Export it as baseline JPEG or PNG."
        )


#: What pydicom raises for lookup tables or windows that do not fit the pixels (a short LUT, a zero width):
#: damaged data, said as such; anything else (out of memory) is not the file's fault.
_DAMAGED_DISPLAY = (ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error)


def _displayed(arr: np.ndarray, ds, photometric: str) -> Image.Image:
    """A DICOM frame as a viewer shows it, in 8-bit grey: its lookup tables applied, stretched to 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else values
    values = np.array(values, dtype=np.float64)  # one float copy, worked on in place
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    _stretch_to_unit(values, robust=not windowed)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, values, out=values)
    values *= 255
    return Image.fromarray(np.rint(values, out=values).astype(np.uint8), mode="L")


#: The percentiles a film without a window of its own is stretched between: the darkest and brightest 0.01% of
#: its pixels are clipped, so a hot or dead pixel cannot set the contrast of the whole image.
ROBUST_PERCENTILES = (0.01, 99.99)


def _stretch_to_unit(values: np.ndarray, robust: bool) -> None:
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


def open_radiograph(source: Source) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file, refusing anything else.

    Args:
        source: a path, the file's bytes or a binary file object.

    Returns:
        The decoded image in its own mode (PNG/JPEG) or mode ``L`` (DICOM), reduced to the working size
        (longest side at most :data:`WORKING_SIDE`).

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
            return _released(_decode_png_or_jpeg(fp))
        except UnidentifiedImageError:
            raise ImageInputError(_NOT_AN_IMAGE) from None
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
        _check_scans(scans)
    fp.seek(start)
    with Image.open(fp, formats=IMAGE_FORMATS) as im:
        _check_size(*im.size)  # from the header, before decoding
        pixels = im.size[0] * im.size[1]
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        with _decode_slot(pixels):
            if im.format == "JPEG":  # decoded at 1/2, 1/4 or 1/8 scale where that still covers the working size
                im.draft(im.mode, (WORKING_SIDE, WORKING_SIDE))
            im.load()
            small = reduce_to_working_size(im)
            small = im.copy() if small is im else small
            im.close()  # the full-resolution pixels go now, not whenever the garbage collector reaches them
            if orientation in _UPRIGHT:
                small = small.transpose(_UPRIGHT[orientation])
            return small, pixels > HEAVY_PIXELS


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
        _stretch_to_unit(arr, robust=True)
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
