"""The embedded source domain: scikit-learn's bundled handwritten digits as small RGB images.

No download: ``sklearn.datasets.load_digits`` ships with scikit-learn (1,797 8x8 images, 10
classes). Each digit is upscaled bicubically, shifted by up to ``max_shift`` pixels and painted
with random foreground / background colours, so that colour is a nuisance, not a cue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["CLASS_NAMES", "DigitsSplit", "render_digits", "split_digits"]

CLASS_NAMES: tuple[str, ...] = tuple(str(i) for i in range(10))
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class DigitsSplit:
    """One split: ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,), ``index`` into load_digits."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray


def _colours(rng: np.random.Generator, n: int, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Foreground / background RGB colours in [0, 1], (n, 3) each, luminance gap >= min_contrast."""
    fg = rng.uniform(0, 1, (n, 3))
    bg = rng.uniform(0, 1, (n, 3))
    bad = np.abs((fg - bg) @ _LUMA) < min_contrast
    while bad.any():  # rejection sampling; terminates quickly for min_contrast < ~0.6
        fg[bad] = rng.uniform(0, 1, (bad.sum(), 3))
        bg[bad] = rng.uniform(0, 1, (bad.sum(), 3))
        bad = np.abs((fg - bg) @ _LUMA) < min_contrast
    return fg, bg


def render_digits(
    image_size: int = 16, max_shift: int = 1, min_contrast: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits rendered as RGB.

    Returns ``(images, labels)``: uint8 (1797, image_size, image_size, 3) and int64 (1797,).
    Deterministic in ``seed``.
    """
    digits = load_digits()
    gray = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    gray = F.interpolate(gray, size=(image_size, image_size), mode="bicubic", align_corners=False)
    alpha = gray.clamp(0, 1)[:, 0].numpy()  # (N, S, S)
    rng = np.random.default_rng(seed)
    n = len(alpha)
    if max_shift:
        shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
        pad = np.pad(alpha, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
        alpha = np.stack([
            p[max_shift + dy: max_shift + dy + image_size, max_shift + dx: max_shift + dx + image_size]
            for p, (dy, dx) in zip(pad, shifts)
        ])
    fg, bg = _colours(rng, n, min_contrast)
    rgb = alpha[..., None] * fg[:, None, None, :] + (1 - alpha[..., None]) * bg[:, None, None, :]
    images = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split_digits(
    images: np.ndarray, labels: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, DigitsSplit]:
    """Stratified train / val / test split (fractions of the whole set). Deterministic in ``seed``."""
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=labels[rest], random_state=seed)
    out = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        idx = np.sort(idx)
        out[name] = DigitsSplit(images=images[idx], labels=labels[idx], index=idx)
    return out
