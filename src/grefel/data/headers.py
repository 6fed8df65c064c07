"""The photo formats grefel reads, and their dimensions from the encoded header, before anything is decoded.

cv2.imdecode allocates the full pixel buffer an image declares before it reads
a single pixel, so a 100 kB PNG declaring 100000x100000 would cost 30 GB.
`grefel predict`, the REST API and the web page all check the declared size
here first (`check_photo`), and only formats parsed here are decoded: a format
we cannot size is refused rather than decoded blind. One list of formats
serves all three.
"""

from __future__ import annotations

import struct

import pillow_heif

from grefel.errors import DataError

# Name, file extensions and MIME type of every format read; HEIC (phones' default) through pillow-heif.
FORMATS = (("PNG", (".png",), "image/png"), ("JPEG", (".jpg", ".jpeg"), "image/jpeg"), ("GIF", (".gif",), "image/gif"),
           ("BMP", (".bmp",), "image/bmp"), ("WebP", (".webp",), "image/webp"),
           ("TIFF", (".tif", ".tiff"), "image/tiff"), ("HEIC", (".heic", ".heif"), "image/heic"))
SUPPORTED = ", ".join(name for name, _, _ in FORMATS[:-1]) + " or " + FORMATS[-1][0]
EXTENSIONS = tuple(ext for _, exts, _ in FORMATS for ext in exts)
MIME_TYPES = tuple(mime for _, _, mime in FORMATS) + ("image/heif",)
# The largest photo decoded: a 48 MP phone photo (8000x6000) passes, a decompression bomb does not.
# Decoded, 120 MP of RGB is 360 MB.
MAX_PIXELS = 120_000_000
MAX_UPLOAD_MB = 50.0                    # the server's default body limit: a 48 MP phone photo is 10-25 MB

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


def _tiff(data: bytes) -> tuple[int, int]:
    """ImageWidth (256) and ImageLength (257) of the first image file directory."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise _undecodable("TIFF header cut short")
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        raise _undecodable("TIFF without an image directory")
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    found: dict[int, int] = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    if len(found) < 2:
        raise _undecodable("TIFF without image width and length")
    return found[256], found[257]


def _heic(data: bytes) -> tuple[int, int]:
    try:
        return pillow_heif.open_heif(data).size     # reads the header; pixels are decoded on access
    except (ValueError, RuntimeError) as exc:
        raise _undecodable(f"HEIC/HEIF that cannot be read: {str(exc).splitlines()[0][:80]}") from None


def is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1",
                                                   b"msf1", b"avif")


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png", _png),
    (b"\xff\xd8\xff", "jpeg", _jpeg),
    (b"GIF87a", "gif", _gif),
    (b"GIF89a", "gif", _gif),
    (b"BM", "bmp", _bmp),
    (b"II*\x00", "tiff", _tiff),
    (b"MM\x00*", "tiff", _tiff),
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
        elif is_heif(data):
            name, (width, height) = "heic", _heic(data)
        else:
            raise _undecodable(f"expected {SUPPORTED}")
    if width < 1 or height < 1:
        raise _undecodable(f"{name} header declares {width}x{height} pixels")
    return name, width, height


def check_photo(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """`image_dimensions`, and a DataError worded for people when the photo is over `max_pixels`."""
    name, width, height = image_dimensions(data)
    if width * height > max_pixels:
        raise DataError(f"this {name.upper()} image is too large to analyse: {width} x {height} pixels "
                        f"({width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f})")
    return name, width, height
