"""What a compressed image stream claims, read from its markers before anything is decoded.

The decoder (:mod:`cxr.data.decode`) asks these before it hands a stream to a codec, so a file whose cost
is not what its header says — a progressive JPEG whose scans repeat thousands of times, a JPEG or JPEG 2000
frame inside a DICOM file larger than the file's header claims, a deflated DICOM dataset that inflates to
gigabytes — is refused at the price of reading its bytes once.

- :func:`jpeg_info`: a JPEG's size, whether it is progressive, and how many scans it holds (markers walked,
  entropy-coded data skipped; linear in the file's size, no pixel decoded).
- :func:`j2k_size`: a JPEG 2000 code stream's image size (its ``SIZ`` marker).
- :func:`inflate_capped`: raw deflate, inflated a chunk at a time into a file, stopped at a byte cap.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from typing import BinaryIO, Optional, Tuple

__all__ = ["JpegInfo", "jpeg_info", "j2k_size", "inflate_capped", "InflateLimitError"]

_CHUNK = 1 << 20
#: Start-of-frame markers (not DHT C4, JPG C8, DAC CC); C2, C6, CA, CE are progressive.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
#: In entropy-coded data a 0xFF is followed by 0x00 (a stuffed byte), a restart marker D0-D7 or fill 0xFF;
#: any other byte after it starts a marker.
_MARKER_IN_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclasses.dataclass(frozen=True)
class JpegInfo:
    """A JPEG stream's frame header and scan count."""

    width: int
    height: int
    precision: int
    progressive: bool
    scans: int


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise ValueError("the JPEG stream ends inside a marker segment")
    return data


def _skip_entropy_data(fp: BinaryIO) -> Optional[int]:
    """Read past a scan's entropy-coded data; returns the marker that ends it (``None`` at the end of the
    stream), leaving ``fp`` just after that marker's two bytes."""
    carry = b""
    while True:
        block = fp.read(_CHUNK)
        if not block:
            return None
        data = carry + block
        m = _MARKER_IN_DATA.search(data)
        if m:
            fp.seek(m.end() - len(data), 1)
            return data[m.start() + 1]
        carry = data[-1:] if data[-1:] == b"\xff" else b""


def jpeg_info(fp: BinaryIO) -> JpegInfo:
    """The frame size, precision, progressiveness and number of scans of the JPEG stream at ``fp``'s position.

    Markers are walked segment by segment (their lengths skipped) and each scan's entropy-coded data is skipped
    to the next marker; nothing is decoded. ``fp`` is left wherever the walk ended.

    Raises:
        ValueError: not a JPEG stream, or one without a frame header.
    """
    if fp.read(2) != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    frame: Optional[Tuple[int, int, int, bool]] = None
    scans = 0
    marker: Optional[int] = None
    while True:
        if marker is None:
            byte = fp.read(1)
            if not byte:
                break
            if byte != b"\xff":
                raise ValueError("a JPEG marker was expected")
            while byte == b"\xff":  # fill bytes before a marker
                byte = fp.read(1)
            if not byte:
                break
            marker = byte[0]
        if marker == 0xD9:  # end of image
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            marker = None
            continue
        (length,) = struct.unpack(">H", _read_exact(fp, 2))
        if length < 2:
            raise ValueError("a JPEG marker segment is shorter than its own length field")
        segment = _read_exact(fp, length - 2)
        if marker in _SOF and frame is None and len(segment) >= 5:
            precision, height, width = struct.unpack(">BHH", segment[:5])
            frame = (width, height, precision, marker in _PROGRESSIVE)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            scans += 1
            marker = _skip_entropy_data(fp)
            if marker is None:
                break
        else:
            marker = None
    if frame is None:
        raise ValueError("the JPEG stream has no frame header")
    width, height, precision, progressive = frame
    return JpegInfo(width, height, precision, progressive, scans)


def j2k_size(data: bytes) -> Tuple[int, int]:
    """``(width, height)`` of the JPEG 2000 code stream in ``data`` (a bare code stream or a JP2 file), from its
    ``SIZ`` marker segment.

    Raises:
        ValueError: no code stream found.
    """
    start = data.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(data) < start + 4 + 2 + 2 + 16:
        raise ValueError("no JPEG 2000 code stream")
    # SIZ: Lsiz (2), Rsiz (2), Xsiz, Ysiz, XOsiz, YOsiz (4 each)
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[start + 8 : start + 24])
    return xsiz - xo, ysiz - yo


class InflateLimitError(ValueError):
    """A deflated stream inflates to more than the cap."""


def inflate_capped(src: BinaryIO, dst: BinaryIO, cap: int) -> int:
    """Inflate the raw deflate stream read from ``src`` into ``dst`` a chunk at a time; returns the bytes written.

    Never holds more than about two chunks in memory, and stops as soon as the output would pass ``cap`` bytes.

    Raises:
        InflateLimitError: the stream inflates to more than ``cap`` bytes.
        zlib.error: the stream is not valid deflate data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    while not inflater.eof:
        data = inflater.unconsumed_tail or src.read(_CHUNK)
        if not data:
            break
        out = inflater.decompress(data, _CHUNK)
        written += len(out)
        if written > cap:
            raise InflateLimitError(f"inflates to more than {cap} bytes")
        dst.write(out)
    tail = inflater.flush()
    written += len(tail)
    if written > cap:
        raise InflateLimitError(f"inflates to more than {cap} bytes")
    dst.write(tail)
    return written
