"""Images between files, arrays and tensors: safe decoding, guided-diffusion's resize-and-crop,
and the uint8 <-> [-1, 1] conversions every model input and output goes through.

Decoding never trusts a file: the size is checked before reading, the pixel count from the header
before decoding (decompression bombs), then the whole image is decoded (truncation shows up here)
and converted to RGB (grayscale, palette, CMYK, RGBA and 16-bit images are converted, not rejected).
A file that fails raises :class:`BadImage` with a one-line reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
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


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every PIL mode: 16/32-bit and float greyscale are rescaled to 8 bits first (a plain
    ``convert`` would clip them to white); alpha is dropped; palettes and CMYK are converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def check_file_size(nbytes: int, max_bytes: int) -> None:
    """Raise :class:`BadImage` for a file of ``nbytes`` over ``relabel.max_file_bytes``: checked from the
    file's size before it is read."""
    if nbytes > max_bytes:
        raise BadImage(f"file too large: {nbytes} bytes > relabel.max_file_bytes={max_bytes}")


def decode_image(data: bytes, *, max_pixels: int, min_side: int = 1,
                 formats: tuple[str, ...] = DECODED_FORMATS) -> tuple[Image.Image, str]:
    """Decode ``data`` fully: ``(RGB PIL image with EXIF orientation applied, original PIL mode)``;
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
            return _to_rgb(ImageOps.exif_transpose(img)), mode
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
    img = img.convert("RGB")
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img)
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
    return torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
