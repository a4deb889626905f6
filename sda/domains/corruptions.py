"""ImageNet-C corruptions through ``corrupt-tta``, made deterministic per image.

corrupt-tta draws from numpy's global RNG (and, for impulse noise, from scikit-image's
``random_noise``, which builds an unseeded Generator). :func:`corrupt_images` seeds both per image
from ``(seed, corruption, index)`` so the same call returns the same bytes on any machine and in
any order.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from sda.io.shards import Sample, ShardSet, write_shards
from sda.runtime import derive_seed

__all__ = ["available_corruptions", "corrupt_images", "write_shifted_domains"]


def available_corruptions() -> tuple[str, ...]:
    import corrupt_tta

    return tuple(sorted(corrupt_tta.corruption_dict))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import corrupt_tta.corruptions as cc

    state = np.random.get_state()
    np.random.seed(seed)
    original = cc.random_noise
    cc.random_noise = functools.partial(original, rng=np.random.default_rng(seed))
    try:
        yield
    finally:
        cc.random_noise = original
        np.random.set_state(state)


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Apply one corruption to a batch.

    ``images`` uint8 (N, H, W, 3); returns uint8 (N, H, W, 3). Image ``i`` is seeded from
    ``(seed, corruption, i)``, so results do not depend on batch composition.
    """
    import corrupt_tta

    if corruption not in corrupt_tta.corruption_dict:
        raise ValueError(f"unknown corruption {corruption!r}; choose from {available_corruptions()}")
    salt = zlib.crc32(corruption.encode())
    out = np.empty_like(images)
    for i, img in enumerate(images):
        with _seeded((seed * 1_000_003 + salt * 7919 + i) % (2**32)):
            x = corrupt_tta.corrupt(img, severity=severity, corruption_name=corruption)
        out[i] = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)
    return out


def write_shifted_domains(split: ShardSet, out: Path, domains: list[str], *, severity: int, seed: int,
                          maxcount: int, meta: dict[str, Any]) -> None:
    """One shard set ``out/<domain>/`` per name: ``clean`` is ``split`` as it is, any other name that
    corruption of it at ``severity`` (seeded by ``(seed, "target_data", name)``); keys and labels are
    the split's, so every domain holds the same images. ``meta`` goes to each manifest after ``domain``."""
    for d in tqdm(domains, desc="target_data", unit="domain"):
        imgs = split.images if d == "clean" else corrupt_images(split.images, d, severity,
                                                                 derive_seed(seed, "target_data", d))
        (out / d).mkdir()
        samples = (Sample(key=k, image=im, label=int(y), meta={"domain": d})
                   for k, im, y in zip(split.keys, imgs, split.labels))
        write_shards(samples, out / d, prefix=d, maxcount=maxcount, meta={"domain": d, **meta})
