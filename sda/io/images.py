"""Images between files, arrays and tensors: safe decoding, guided-diffusion's resize-and-crop,
and the uint8 <-> [-1, 1] conversions every model input and output goes through.

Decoding never trusts a file: the size is checked before reading, the pixel count from the header
before decoding (decompression bombs), then the whole image is decoded (truncation shows up here)
and converted to 8 bits a channel, ``L`` or ``RGB`` (palette, CMYK, RGBA, 16 / 32-bit and float images
are converted, not rejected; a high bit depth is scaled by the file's range, never per image).
A file that fails raises :class:`BadImage` with a one-line reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DECODED_FORMATS", "FOLDER_FORMATS", "FOLDER_SUFFIXES", "IMAGE_SUFFIXES", "BadImage", "center_crop_arr", "check_file_size", "decode_image", "read_image",
           "to_uint8", "to_unit_range"]

# the image files the relabel inbox reads, and the Pillow decoders its bytes may reach (anyone may write
# to an inbox: the three web formats only)
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp"})
DECODED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
# a user's own source / target folders (folder profile) also hold the common data-set formats BMP and TIFF
FOLDER_SUFFIXES: frozenset[str] = IMAGE_SUFFIXES | {".bmp", ".tif", ".tiff"}
FOLDER_FORMATS: tuple[str, ...] = (*DECODED_FORMATS, "BMP", "TIFF")


class BadImage(ValueError):
    """The bytes are not a usable image; ``str(err)`` is the reason recorded in quarantine. ``cut_short``:
    the bytes end early (empty, or a decoder ran out of data), which is also what an unfinished upload
    looks like."""

    def __init__(self, reason: str, *, cut_short: bool = False):
        super().__init__(reason)
        self.cut_short = cut_short


_ROWS_PIXELS = 1 << 20  # pixels of a wide image converted at a time: no full-size wide copy of a large scan


def _to_255(v: np.ndarray, top: int) -> np.ndarray:
    """Integer samples ``v`` in ``0..top`` as ``0..255``, rounded (integer arithmetic: no float copy)."""
    return (v * 255 + top // 2) // top


def png_significant_bits(data: bytes) -> int | None:
    """The significant bits a PNG's ``sBIT`` chunk declares (the largest over its channels; e.g. 12 for
    12-bit camera data stored in 16 bits), or None: not a PNG, or no ``sBIT`` before the image data.
    Only chunk headers are read (bounded by ``data``)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos: pos + 4], "big")
        kind = data[pos + 4: pos + 8]
        if kind == b"sBIT" and 1 <= length <= 4 and pos + 8 + length <= len(data):
            return max(data[pos + 8: pos + 8 + length])
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _integer_range(img: Image.Image, significant_bits: int | None) -> tuple[int, bool]:
    """(the largest value of a greyscale integer image's range, whether its samples are signed): the
    file's own bit depth (PNG ``sBIT``, TIFF BitsPerSample / SampleFormat), never the image's content."""
    if img.mode.startswith("I;16"):
        bits = significant_bits if significant_bits and significant_bits < 16 else 16
        return (1 << bits) - 1, img.mode.endswith("S")
    tags = getattr(img, "tag_v2", {})
    bits, fmt = tags.get(258, 32), tags.get(339, 1)
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
    return (1 << (bits - 1 if signed else bits)) - 1, signed


def _grey_to_8bit(img: Image.Image, significant_bits: int | None) -> Image.Image:
    """A 16 / 32-bit integer or float greyscale image as 8-bit ``L``, scaled by its format's range
    (:func:`_integer_range`; floats as 0..1), values outside it clipped: the same value gives the same grey
    in every image, nothing is stretched per image. Converted a band of rows at a time in integer
    arithmetic: no float64 copy of a large scan."""
    w, h = img.size
    out = np.empty((h, w), np.uint8)
    rows = max(1, _ROWS_PIXELS // max(1, w))
    top, signed = (0, False) if img.mode == "F" else _integer_range(img, significant_bits)
    for y in range(0, h, rows):
        band = np.asarray(img.crop((0, y, w, min(h, y + rows))))
        if img.mode == "F":
            out[y: y + rows] = (np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            continue
        if band.dtype == np.int32 and not signed:
            band = band.view(np.uint32)  # Pillow holds unsigned 32-bit samples in a signed int32 image
        out[y: y + rows] = _to_255(np.clip(band.astype(np.int64 if band.dtype.itemsize > 2 else np.int32), 0, top), top)
    return Image.fromarray(out, mode="L")


def _rgb16_png(data: bytes, significant_bits: int) -> Image.Image | None:
    """A 16-bit RGB(A) PNG whose ``sBIT`` says fewer than 16 bits carry data, as 8-bit RGB scaled by those
    bits. Pillow keeps only the high byte of such a PNG (12-bit data: 4 bits left, nearly black), so it is
    decoded again at full depth with OpenCV (the bytes already decoded by Pillow as a PNG)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        return None
    top = (1 << significant_bits) - 1
    out = np.empty(arr.shape[:2] + (3,), np.uint8)
    rows = max(1, _ROWS_PIXELS // max(1, arr.shape[1]))
    for y in range(0, arr.shape[0], rows):
        out[y: y + rows] = _to_255(np.minimum(arr[y: y + rows, :, 2::-1].astype(np.int32), top), top)  # BGR(A) -> RGB
    return Image.fromarray(out, mode="RGB")


def _to_8bit(img: Image.Image, data: bytes) -> Image.Image:
    """``L`` for greyscale images, ``RGB`` for everything else, 8 bits a channel (see :func:`_grey_to_8bit`,
    :func:`_rgb16_png`); alpha is dropped, palettes and CMYK converted. The file's metadata (EXIF) is kept."""
    sbit = png_significant_bits(data) if img.format == "PNG" else None
    # IHDR: bit depth at byte 24, colour type at 25 (2 RGB, 6 RGBA)
    rgb16 = img.format == "PNG" and sbit is not None and 8 < sbit < 16 and data[24] == 16 and data[25] in (2, 6)
    if rgb16:
        out = _rgb16_png(data, sbit) or img.convert("RGB")
    elif img.mode in ("L", "RGB"):
        return img
    elif img.mode.startswith("I") or img.mode == "F":
        out = _grey_to_8bit(img, sbit)
    elif img.mode in ("1", "LA"):
        out = img.convert("L")
    elif img.mode == "P" and "transparency" in img.info:
        out = img.convert("RGBA").convert("RGB")
    else:
        out = img.convert("RGB")
    out.info.update(img.info)
    return out


def check_file_size(nbytes: int, max_bytes: int) -> None:
    """Raise :class:`BadImage` for a file of ``nbytes`` over ``relabel.max_file_bytes``: checked from the
    file's size before it is read."""
    if nbytes > max_bytes:
        raise BadImage(f"file too large: {nbytes} bytes > relabel.max_file_bytes={max_bytes}")


def decode_image(data: bytes, *, max_pixels: int, min_side: int = 1,
                 formats: tuple[str, ...] = DECODED_FORMATS) -> tuple[Image.Image, str]:
    """Decode ``data`` fully: ``(PIL image, original PIL mode)``, the image 8-bit ``L`` (greyscale files:
    kept single-channel until resized, a third of an RGB copy's memory) or ``RGB`` with EXIF orientation
    applied (:func:`_to_8bit`: 16-bit by the file's bit depth, PNG ``sBIT`` honoured);
    raise :class:`BadImage` with the reason otherwise. Only ``formats`` (Pillow format names) are
    tried, whatever the file's name: no other decoder Pillow has (or hands to Ghostscript) sees the bytes."""
    if not data:
        raise BadImage("empty file (0 bytes)", cut_short=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"too many pixels: header says {w}x{h} > relabel.max_pixels={max_pixels}")
            if min(w, h) < min_side:
                raise BadImage(f"too small: {w}x{h} < relabel.min_side={min_side}")
            img.load()  # full decode: truncated or corrupt data fails here
            mode = img.mode
            out = _to_8bit(img, data)
            ImageOps.exif_transpose(out, in_place=True)
            return out, mode
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"not an image (or not one of {', '.join(formats)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"too many pixels: {err}"[:300]) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise BadImage(f"truncated or corrupt image: {type(err).__name__}: {err}"[:300], cut_short=True) from None


def center_crop_arr(img: Image.Image, size: int, *, max_pixels: int | None = None) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr``: uint8 (size, size, 3) from any PIL image.

    The shorter side is scaled to ``size`` before the crop, so a thin image is upsampled along its
    long side too: with ``max_pixels``, an image whose resized (uncropped) size would exceed it is a
    :class:`BadImage` (an 8 x 625,000 image at size 256 would be 5 billion pixels)."""
    if max_pixels is not None:
        w, h = img.size
        scale = size / max(1, min(w, h))
        if scale > 1 and w * h * scale * scale > max_pixels:
            raise BadImage(f"too thin: {w}x{h} would be resized to {round(w * scale)}x{round(h * scale)} "
                           f"pixels for the model's {size} px (> relabel.max_pixels={max_pixels})")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    # an L image is resized as L (the same numbers per channel as its RGB copy, a third of the memory)
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img.convert("RGB"))
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[y: y + size, x: x + size])


def read_image(path: Path, size: int) -> np.ndarray:
    """Open ``path`` and return :func:`center_crop_arr` of it; a bad file names the path."""
    try:
        with Image.open(path) as img:
            return center_crop_arr(img, size)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the image ({err}); replace or remove the file") from None


def to_unit_range(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) (NumPy, or a tensor on any device) -> float32 (B, 3, H, W) in [-1, 1] on ``device``."""
    import torch

    return torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    import torch

    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
