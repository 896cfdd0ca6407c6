"""Files a hostile visitor would upload: small files whose decoding would cost the server gigabytes or minutes
if their headers were believed, and damaged headers. Made from a real X-ray; used by the tests and by
``bench/upload_memory.py`` (the same builders at full size), with the DICOM builder every test uses."""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

__all__ = [
    "dicom_dataset",
    "write_dicom",
    "damaged_dicom",
    "save_dicom",
    "deflated_dicom",
    "repeated_scan_jpeg",
    "dicom_with_frame",
    "exif_rotated_jpeg",
    "hot_pixel_png",
    "text_chunk_bomb_png",
]


def dicom_dataset(
    pixels: np.ndarray,
    bits: int = 16,
    stored_bits: Optional[int] = None,
    photometric: str = "MONOCHROME2",
    window: Optional[tuple] = None,
    rescale: Optional[tuple] = None,
    with_pixels: bool = True,
):
    """A minimal CR DICOM dataset (explicit VR little endian) holding ``pixels`` uncompressed: one frame (rows ×
    columns) or several (frames × rows × columns), ``bits`` allocated and ``stored_bits`` (default all) stored,
    optionally windowed (center, width), rescaled (slope, intercept) or without pixel data."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ComputedRadiographyImageStorage, generate_uid(), "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    stored_bits = stored_bits or bits
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored_bits, stored_bits - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    return ds


def write_dicom(path: Path, pixels: np.ndarray, photometric="MONOCHROME2", window=None, rescale=None, with_pixels=True):
    """A 12-bit CR DICOM file of ``pixels`` (see :func:`dicom_dataset`)."""
    ds = dicom_dataset(pixels, 16, 12, photometric, window, rescale, with_pixels)
    return save_dicom(ds, path)


def save_dicom(ds, path: Path) -> Path:
    ds.save_as(str(path), enforce_file_format=True)
    return path


def damaged_dicom(path: Path, pixels: np.ndarray, field: str) -> Path:
    """A DICOM file of ``pixels`` whose header is damaged: ``NumberOfFrames`` "ab" (not a number), or ``Rows``
    given twice, the second time not the pixel data's size."""
    ds = dicom_dataset(pixels)
    ds.NumberOfFrames = 1
    raw = save_dicom(ds, path).read_bytes()
    if field == "NumberOfFrames":
        raw = raw.replace(b"\x28\x00\x08\x00IS\x02\x001 ", b"\x28\x00\x08\x00IS\x02\x00ab")
    elif field == "Rows":
        rows = b"\x28\x00\x10\x00US\x02\x00" + pixels.shape[0].to_bytes(2, "little")
        at = raw.index(rows) + len(rows)
        raw = raw[:at] + b"\x28\x00\x10\x00US\x02\x00" + (9999).to_bytes(2, "little") + raw[at:]
    else:
        raise ValueError(f"no damage known for {field!r}")
    path.write_bytes(raw)
    return path


def deflated_dicom(path: Path, pixels: np.ndarray, padding_bytes: int = 0) -> Path:
    """A DICOM file in "Deflated Explicit VR Little Endian" holding ``pixels``, plus (a bomb) a private OB
    element of ``padding_bytes`` zeros before the pixel data, deflated as the standard says. The padding is
    deflated a megabyte at a time, so making a gigabyte bomb never holds the gigabyte."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dicom_dataset(pixels)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    pixel_data = ds.PixelData
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as out:
        head = DicomBytesIO()
        head.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(head, ds.file_meta, enforce_standard=True)
        out.write(head.getvalue())
        out.write(deflate.compress(body.getvalue()))
        if padding_bytes:  # (0009,1010) OB, private: explicit VR with a 4-byte length
            padding_bytes += padding_bytes % 2
            out.write(deflate.compress(b"\x09\x00\x10\x10OB\0\0" + padding_bytes.to_bytes(4, "little")))
            zeros = bytes(1 << 20)
            for start in range(0, padding_bytes, len(zeros)):
                out.write(deflate.compress(zeros[: min(len(zeros), padding_bytes - start)]))
        pixel_header = b"\xe0\x7f\x10\x00OW\0\0" + len(pixel_data).to_bytes(4, "little")
        out.write(deflate.compress(pixel_header + pixel_data))
        out.write(deflate.flush())
    return path


def repeated_scan_jpeg(grey: Image.Image, repeats: int) -> bytes:
    """A progressive JPEG of ``grey`` whose last scan is repeated ``repeats`` more times: valid, small, and each
    repeat costs the decoder another pass over the whole image."""
    buf = io.BytesIO()
    grey.save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data.rfind(b"\xff\xda")
    scan = data[last:-2]  # the last SOS segment and its entropy-coded data, before EOI
    return data[:-2] + scan * repeats + b"\xff\xd9"


def dicom_with_frame(path: Path, frame: Image.Image, fmt: str, header_size: Optional[tuple] = None) -> Path:
    """A DICOM file whose pixel data is ``frame`` encoded as ``fmt`` ("JPEG" or "JPEG2000") and encapsulated;
    its header claims ``header_size`` (columns, rows; default the frame's own)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    buf = io.BytesIO()
    if fmt == "JPEG":
        frame.save(buf, "JPEG", quality=90)
    else:
        frame.save(buf, "JPEG2000", irreversible=False)
    cols, rows = header_size or frame.size
    ds = dicom_dataset(np.zeros((1, 1), np.uint8), bits=8)
    ds.Rows, ds.Columns = rows, cols
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if fmt == "JPEG" else JPEG2000Lossless
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return save_dicom(ds, path)


def exif_rotated_jpeg(upright: Image.Image, path: Path) -> Path:
    """``upright`` stored rotated a quarter turn clockwise with EXIF Orientation 8, as a phone saves it: a
    viewer that applies the orientation shows it upright."""
    stored = upright.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    stored.save(path, "JPEG", quality=95, exif=exif)
    return path


def hot_pixel_png(grey: Image.Image, path: Path) -> Path:
    """``grey`` as a 12-bit film in a 16-bit PNG, with one pixel at 65535."""
    arr = np.asarray(grey, dtype=np.uint16) * 16
    arr[arr.shape[0] // 2, arr.shape[1] // 2] = 65535
    Image.fromarray(arr).save(path)
    return path


def text_chunk_bomb_png(grey: Image.Image, path: Path, text_bytes: int = 2 << 20) -> Path:
    """``grey`` as a PNG with a compressed text chunk (zTXt) that inflates to ``text_bytes``, past Pillow's
    limit."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * text_bytes, zip=True)
    grey.save(path, pnginfo=info)
    return path
