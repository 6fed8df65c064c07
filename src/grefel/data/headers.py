"""Image dimensions from the encoded header, before anything is decoded.

cv2.imdecode allocates the full pixel buffer an image declares before it reads
a single pixel, so a 100 kB PNG declaring 100000x100000 would cost 30 GB. The
server checks the declared size here first, and only formats parsed here are
passed on to cv2: a format we cannot size is refused rather than decoded blind.
"""

from __future__ import annotations

import struct

from grefel.errors import DataError

SUPPORTED = "PNG, JPEG, GIF, BMP or WebP"

# JPEG start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}


def _undecodable(why: str) -> DataError:
    return DataError(f"not a decodable image ({why})")


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise _undecodable("PNG without an IHDR header")
    return struct.unpack(">II", data[16:24])


def _jpeg(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:                     # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:                     # scan data before any frame header
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF:
            if length < 7 or pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise _undecodable("JPEG without a readable frame header")


def _gif(data: bytes) -> tuple[int, int]:
    """The larger of the logical screen and the first frame: a frame may declare more than the screen."""
    if len(data) < 13:
        raise _undecodable("GIF header cut short")
    width, height = struct.unpack("<HH", data[6:10])
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)   # skip the global colour table
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:                      # image descriptor: left, top, width, height
            if pos + 9 > len(data):
                break
            frame_w, frame_h = struct.unpack("<HH", data[pos + 5:pos + 9])
            return max(width, frame_w), max(height, frame_h)
        if block != 0x21 or pos + 2 > len(data):
            break
        pos += 2                               # extension introducer and label, then sub-blocks
        while pos < len(data) and data[pos]:
            pos += 1 + data[pos]
        pos += 1
    raise _undecodable("GIF without an image descriptor")


def _bmp(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise _undecodable("BMP header cut short")
    if struct.unpack("<I", data[14:18])[0] == 12:   # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)             # negative height means top-down rows


def _webp(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    raise _undecodable("WebP without a VP8, VP8L or VP8X header")


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png", _png),
    (b"\xff\xd8\xff", "jpeg", _jpeg),
    (b"GIF87a", "gif", _gif),
    (b"GIF89a", "gif", _gif),
    (b"BM", "bmp", _bmp),
)


def image_dimensions(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) declared by the header; DataError if the format is not one we size."""
    for signature, name, parse in _SIGNATURES:
        if data.startswith(signature):
            width, height = parse(data)
            break
    else:
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            name, (width, height) = "webp", _webp(data)
        else:
            raise _undecodable(f"expected {SUPPORTED}")
    if width < 1 or height < 1:
        raise _undecodable(f"{name} header declares {width}x{height} pixels")
    return name, width, height
