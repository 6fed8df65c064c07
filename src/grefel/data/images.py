"""Decoding, resizing and colour conversion of face images (uint8 numpy arrays).

Decoding runs on a small thread pool: cv2.imdecode releases the GIL, so two
cores decode the 28k FERPlus PNGs about twice as fast as one.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import pillow_heif

from grefel.data.headers import SUPPORTED, is_heif
from grefel.errors import DataError

FER_SIZE = 48
FER_PIXELS = FER_SIZE * FER_SIZE
# Whitespace-separated integers, each with at most a sign glued to its digits. np.fromstring alone reads a
# lone "+" or "-" token as 0 or glues it to the next number, so a malformed row could load silently.
_PIXEL_TEXT = re.compile(r"\s*(?:[+-]?\d+(?:\s+[+-]?\d+)*)?\s*", re.ASCII)
_PIXEL_TOKEN = re.compile(r"[+-]?\d+", re.ASCII)
_CHUNK = 512


class ImageProblem(Exception):
    """Why one image could not be used; `reason` is the key counted in `dropped`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@contextlib.contextmanager
def native_stderr_without_libpng() -> Iterator[None]:
    """Hold back what C code writes to stderr meanwhile, and pass it on without libpng's own error lines:
    a corrupt PNG is reported once, by grefel, naming the file. Process-wide (file descriptor 2), so it
    wraps whole decoding steps, not single images on a server's threads."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(("libpng error:", "libpng warning:"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def decode_image(data: bytes, color: str) -> np.ndarray | None:
    """Decode encoded image bytes to uint8 (H, W) grey or (H, W, 3) RGB; None if undecodable."""
    if not data:  # cv2.imdecode asserts on an empty buffer (a zero-byte file)
        return None
    if is_heif(data):
        try:
            rgb = np.asarray(pillow_heif.open_heif(data, convert_hdr_to_8bit=True).to_pillow().convert("RGB"))
        except (ValueError, RuntimeError):
            return None
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if color == "grey" else np.ascontiguousarray(rgb)
    buf = np.frombuffer(data, np.uint8)
    if color == "grey":
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size); INTER_AREA when shrinking avoids aliasing, bilinear when enlarging."""
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    interpolation = cv2.INTER_AREA if size < h or size < w else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def to_color(image: np.ndarray, color: str, *, stack: bool = False) -> np.ndarray:
    """Convert an image (H, W[, 3]) or, with `stack`, a stack (N, H, W[, 3]) to "grey" or "rgb"."""
    is_rgb = image.ndim == (4 if stack else 3)
    if color == "rgb":
        return image if is_rgb else np.repeat(image[..., None], 3, axis=-1)
    if not is_rgb:
        return image
    # One cvtColor over the stack viewed as a single tall image: same weights, no Python loop.
    flat = np.ascontiguousarray(image).reshape(-1, image.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(image.shape[:-1])


def _load_one(path: Path, color: str, size: int | None, expect: int | None) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageProblem("missing_image", "image file not found") from None
    except OSError as exc:
        raise ImageProblem("unreadable_image", f"cannot read image ({exc.strerror})") from None
    except ValueError:  # a NUL byte in the name
        raise ImageProblem("unreadable_image", "not a valid file name") from None
    image = decode_image(data, color)
    if image is None:
        raise ImageProblem("undecodable_image", f"not a decodable image ({SUPPORTED} expected)")
    if expect is not None and image.shape[:2] != (expect, expect):
        h, w = image.shape[:2]
        raise ImageProblem("wrong_size", f"image is {w}x{h}, expected {expect}x{expect}")
    return resize_square(image, size) if size else image


def _load_chunk(paths: Sequence[Path], color: str, size: int | None,
                expect: int | None) -> list[np.ndarray | ImageProblem]:
    out: list[np.ndarray | ImageProblem] = []
    for path in paths:
        try:
            out.append(_load_one(path, color, size, expect))
        except ImageProblem as problem:
            out.append(problem)
    return out


def load_images(paths: Sequence[Path], color: str, *, size: int | None = None,
                expect: int | None = None) -> list[np.ndarray | ImageProblem]:
    """Decode every path (in order) to an image, or the ImageProblem that prevented it.

    `expect` is the required source side length (FERPlus: 48); `size` resizes after decoding.
    """
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    workers = max(1, min(4, os.cpu_count() or 1, len(chunks)))
    with native_stderr_without_libpng():
        if workers == 1:
            results = [_load_chunk(c, color, size, expect) for c in chunks]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="grefel-decode") as pool:
                results = list(pool.map(lambda c: _load_chunk(c, color, size, expect), chunks))
    return [item for chunk in results for item in chunk]


def parse_pixels(text: str, where: str) -> np.ndarray:
    """Parse a FER2013-style `pixels` field (2304 space-separated ints 0-255) to uint8 (48, 48)."""
    try:
        if not _PIXEL_TEXT.fullmatch(text):
            raise ValueError(text)
        values = np.fromstring(text, dtype=np.int64, sep=" ")  # text mode: fast, strict to the end
    except ValueError:
        tokens = text.split()
        k = next((k for k, t in enumerate(tokens) if not _PIXEL_TOKEN.fullmatch(t)), 0)
        raise DataError(f"{where}: field pixels value #{k + 1} is {tokens[k][:20] if tokens else text!r}, "
                        f"expected space-separated integers 0-255") from None
    if values.size != FER_PIXELS:
        raise DataError(f"{where}: field pixels has {values.size} values, expected {FER_PIXELS} (48x48)")
    out_of_range = np.flatnonzero((values < 0) | (values > 255))
    if out_of_range.size:
        k = int(out_of_range[0])
        raise DataError(f"{where}: field pixels value #{k + 1} is {values[k]}, expected integers 0-255")
    return values.astype(np.uint8).reshape(FER_SIZE, FER_SIZE)
