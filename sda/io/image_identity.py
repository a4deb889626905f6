"""When two image files are the same picture: by their decoded pixels (any format, any encoder), or as
a near copy (a JPEG export, a resize, a re-save with other settings).

- **Same pixels**: :attr:`Fingerprint.pixels`, the sha256 of the decoded RGB pixels and the size, so a
  lossless WebP, BMP, TIFF or re-saved PNG of a PNG is the same picture as the PNG; a greyscale file and
  its RGB copy too.
- **Near copy**: three agreements, each cheap: ``imagehash.phash`` (the 64-bit DCT perceptual hash of
  the 32 x 32 greyscale image) within :data:`NEAR_PHASH_BITS` bits, a 4 x 4 RGB thumbnail within
  :data:`NEAR_THUMB_RMSE` grey levels (root mean square, 0-255: the colours, which a re-encoded or
  resized copy keeps), and a 16 x 16 greyscale thumbnail correlated at :data:`NEAR_GREY_NCC` or more
  (normalised cross-correlation: the layout at a finer scale than the hash's). The hash alone confuses
  distinct images that share a layout (a centred shape, a printed digit: 0.3-0.4 % of such pairs of one
  class fall within 4 bits); hash and colours together still matched 2 of 79,800 pairs of printed digits
  on similar paper. The thresholds were chosen on generated pairs (``bench/near_duplicates.py``, which
  prints the rates; docs/own-data.md has them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

__all__ = ["NEAR_GREY_NCC", "NEAR_PHASH_BITS", "NEAR_THUMB_RMSE", "Fingerprint", "NearIndex", "fingerprint",
           "near_distances"]

NEAR_PHASH_BITS = 10       # of 64: Hamming distance of imagehash.phash
NEAR_THUMB_RMSE = 6.0      # grey levels (0-255): 4 x 4 RGB thumbnails
NEAR_GREY_NCC = 0.9        # normalised cross-correlation of 16 x 16 greyscale thumbnails
THUMB_SIDE = 4
GREY_SIDE = 16
_HASH_ROWS_PIXELS = 1 << 20  # rows of a large image converted and hashed at a time (bounded memory)


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a decoded image: ``pixels`` (sha256 hex of ``"<w>x<h>\\n"`` and the RGB bytes),
    ``phash`` (16 hex digits, ``imagehash.phash``), ``thumb`` (the 4 x 4 RGB thumbnail, 48 bytes as hex),
    ``grey`` (the 16 x 16 greyscale thumbnail, 256 bytes as hex); thumbnails box-averaged."""

    pixels: str
    phash: str
    thumb: str
    grey: str

    def as_dict(self) -> dict[str, str]:
        return {"pixels": self.pixels, "phash": self.phash, "thumb": self.thumb, "grey": self.grey}

    def vectors(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(phash as an int, the RGB thumbnail as float32 (48,), the grey thumbnail zero-mean and unit-norm
        as float32 (256,); all zeros for a flat image, which correlates with nothing)."""
        thumb = np.frombuffer(bytes.fromhex(self.thumb), np.uint8).astype(np.float32)
        grey = np.frombuffer(bytes.fromhex(self.grey), np.uint8).astype(np.float32)
        grey -= grey.mean()
        norm = float(np.linalg.norm(grey))
        return int(self.phash, 16), thumb, grey / norm if norm > 1e-3 else np.zeros_like(grey)


def _pixel_hash(img: Image.Image) -> str:
    """sha256 of the RGB pixels, converted a band of rows at a time (no full-size RGB copy of an L image)."""
    w, h = img.size
    digest = hashlib.sha256(f"{w}x{h}\n".encode())
    rows = max(1, _HASH_ROWS_PIXELS // max(1, w))
    for y in range(0, h, rows):
        band = img.crop((0, y, w, min(h, y + rows))) if rows < h else img
        digest.update(band.convert("RGB").tobytes())
    return digest.hexdigest()


def fingerprint(img: Image.Image) -> Fingerprint:
    """The :class:`Fingerprint` of a decoded image (mode ``L`` or ``RGB``, as :func:`sda.io.images.decode_image` gives)."""
    thumb = img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).convert("RGB")
    grey = img.convert("L") if img.mode != "L" else img
    grey = grey.resize((GREY_SIDE, GREY_SIDE), Image.Resampling.BOX)
    return Fingerprint(_pixel_hash(img), str(imagehash.phash(img)), thumb.tobytes().hex(), grey.tobytes().hex())


def near_distances(a: Fingerprint, b: Fingerprint) -> tuple[int, float, float]:
    """(phash bits apart, RGB thumbnail rmse, grey thumbnail correlation) of two fingerprints."""
    (ha, ta, ga), (hb, tb, gb) = a.vectors(), b.vectors()
    return (ha ^ hb).bit_count(), float(np.sqrt(np.mean((ta - tb) ** 2))), float(ga @ gb)


class NearIndex:
    """Fingerprints added one at a time (``add``), each with an owner (any value: a class and a file),
    looked up by exact pixels or as a near copy (``find``). Near lookups scan every entry with NumPy:
    about 10 us per 1,000 entries."""

    def __init__(self, near: bool = True):
        self.near = near
        self._exact: dict[str, object] = {}
        self._owners: list[object] = []
        self._phash = np.zeros(64, np.uint64)
        self._thumb = np.zeros((64, 3 * THUMB_SIDE ** 2), np.float32)
        self._grey = np.zeros((64, GREY_SIDE ** 2), np.float32)

    def __len__(self) -> int:
        return len(self._owners)

    def add(self, fp: Fingerprint, owner: object) -> None:
        self._exact.setdefault(fp.pixels, owner)
        n = len(self._owners)
        if n == len(self._phash):
            self._phash, self._thumb, self._grey = (np.concatenate([a, np.zeros_like(a)])
                                                    for a in (self._phash, self._thumb, self._grey))
        h, self._thumb[n], self._grey[n] = fp.vectors()
        self._phash[n] = np.uint64(h)
        self._owners.append(owner)

    def find(self, fp: Fingerprint) -> tuple[object, str] | None:
        """``(owner, how)`` of an entry that is the same picture as ``fp`` (``how``: ``"same pixels"`` or
        ``"near copy: phash d bits, colour rmse r, correlation c"``), the exact one first; None when there
        is none."""
        if fp.pixels in self._exact:
            return self._exact[fp.pixels], "same pixels"
        n = len(self._owners)
        if not self.near or not n:
            return None
        h, thumb, grey = fp.vectors()
        bits = np.bitwise_count(self._phash[:n] ^ np.uint64(h))
        close = np.flatnonzero(bits <= NEAR_PHASH_BITS)
        if not len(close):
            return None
        rmse = np.sqrt(np.mean((self._thumb[close] - thumb) ** 2, axis=1))
        ncc = self._grey[close] @ grey
        ok = np.flatnonzero((rmse <= NEAR_THUMB_RMSE) & (ncc >= NEAR_GREY_NCC))
        if not len(ok):
            return None
        best = int(ok[np.argmax(ncc[ok])])
        i = int(close[best])
        return self._owners[i], (f"near copy: phash {int(bits[i])} bits, colour rmse {rmse[best]:.1f}, "
                                 f"correlation {ncc[best]:.2f}")
