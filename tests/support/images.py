"""Image files made in memory for the tests of decoding, the inbox and picture identity."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` saved as ``fmt`` (PIL's format name and options), the file's bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    """The PNG file of the array ``arr`` (uint8 HxW or HxWx3/4; ``mode``: PIL's, where it differs)."""
    return encode(Image.fromarray(arr, mode=mode), "PNG")


def rgb(seed: int = 0, size: int = 20) -> np.ndarray:
    """A random uint8 RGB image (size, size, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def random_png(seed: int = 0, size: int = 20) -> bytes:
    """The PNG file of :func:`rgb`'s random image."""
    return png_bytes(rgb(seed, size))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_header_png(w: int = 50_000, h: int = 50_000) -> bytes:
    """A valid PNG header that claims w x h pixels, with one row of data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
