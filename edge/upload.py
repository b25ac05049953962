"""Untrusted image bytes -> a BGR frame, with the size known before any pixel is decoded.

An upload is only decoded when its header names a format OpenCV reads (JPEG, PNG, BMP, WebP) and
a size within ``max_pixels``: a 40-byte PNG that claims 60000 x 60000 pixels would otherwise make
the decoder allocate 10 GB. A JPEG whose entropy-coded data stops before its end-of-image marker,
or a PNG without its ``IEND`` chunk, is refused as truncated: OpenCV would decode the missing part
as grey and report faces in it.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from edge.errors import FeatherFaceError

# JPEG start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(FeatherFaceError):
    """The bytes are not a complete image in a supported format, or it has too many pixels."""

    exit_code = 2


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the header of a JPEG, PNG, BMP or WebP; ``None`` otherwise."""
    try:
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return "png", w, h
        if data[:2] == b"BM" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return "bmp", abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return "jpeg", w, h
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG we read
            return None
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return "webp", w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return "webp", w, h
    return None


def _complete(fmt: str, data: bytes) -> bool:
    if fmt == "jpeg":
        # 0xFFD9 cannot occur inside entropy-coded data (0xFF is stuffed there), so the image is whole
        # when an end-of-image marker follows the last start-of-scan; trailing bytes after it are fine.
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0
    if fmt == "png":
        return b"IEND" in data[-64:]
    return True


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode ``data`` to an ``HxWx3`` uint8 BGR image; :class:`ImageError` says why it cannot be."""
    if not data:
        raise ImageError("empty file")
    size = image_size(data)
    if size is None:
        raise ImageError("not a JPEG, PNG, BMP or WebP image")
    fmt, w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{fmt} header gives a size of {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} pixels is more than the limit of {max_pixels}")
    if not _complete(fmt, data):
        raise ImageError(f"truncated {fmt}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    # EXIF orientation (applied by IMREAD_COLOR, as by browsers and cv2.imread) may swap the sides.
    if image is None or image.ndim != 3 or image.shape[:2] not in ((h, w), (w, h)):
        raise ImageError(f"corrupt {fmt}")
    return image
