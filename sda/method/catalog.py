"""Every test-time method, registered: the modules that register methods (input adaptation, the
baselines package, SDA's combinations) imported in the table's order, and the registry's lookups
re-exported. Look methods up through this module (importing the registry alone registers nothing, so
that a method module can import the registry without a circle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sda.method import input_methods  # noqa: F401
from sda.method import baselines  # noqa: F401
from sda.method import guarded  # noqa: F401
from sda.method.guarded import NormInputProfile
from sda.method.registry import (MethodContext, StreamInputs, StreamMethod, build_method, get_method, method_names,
                                 resolve_methods)
from sda.models.classifiers import Classifier

# the guard's profiles are shared when both fit in this (ImageNet's ResNet-50 on 15,000 images would take
# 3 GB: the guard then profiles each batch itself)
MAX_SHARED_PROFILE_BYTES = 1 << 30

__all__ = ["MethodContext", "StreamInputs", "StreamMethod", "build_method", "frozen_outputs", "get_method",
           "method_names", "read_source_split", "resolve_methods"]


def frozen_outputs(source: Classifier, aligned: Classifier, originals: np.ndarray, projections: np.ndarray,
                   device: torch.device, *, fallback: bool = False, profiles: bool = False) -> dict[str, torch.Tensor]:
    """The frozen models' outputs every method reads (``FROZEN_KEYS``), one forward per model and input.
    ``fallback`` (classifier_align rejected its model): the aligned model's outputs are the source
    model's on the projections, as SDA then decides (sda.method.scoring.fell_back). ``profiles``: also the
    source model's per-image feature statistics of both (``source_orig_profile`` / ``source_proj_profile``,
    float64 (N, K)), which the guard of SDA's combinations reads."""
    out: dict[str, torch.Tensor] = {}
    out["source_orig"], out["source_orig_features"] = source.logits_and_features(originals, device=device)
    out["source_proj"], source_proj_features = source.logits_and_features(projections, device=device)
    if fallback:
        out["aligned_proj"], out["aligned_proj_features"] = out["source_proj"], source_proj_features
    else:
        out["aligned_proj"], out["aligned_proj_features"] = aligned.logits_and_features(projections, device=device)
    if profiles:  # the guard's per-image feature statistics (sda.method.guarded.NormInputProfile)
        profile = NormInputProfile(source, device)
        if 0 < 2 * 4 * len(originals) * len(profile.weights) <= MAX_SHARED_PROFILE_BYTES:
            for key, images in (("source_orig_profile", originals), ("source_proj_profile", projections)):
                out[key] = torch.from_numpy(np.concatenate(
                    [profile(images[i: i + 512]) for i in range(0, len(images), 512)]).astype(np.float32))
    return out


def read_source_split(source_dir: Path) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
    """``split -> (uint8 images (N, H, W, 3), int64 labels (N,))`` of the source data's shard set
    ``source_dir/<split>``, read when asked."""
    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        from sda.io.shards import iter_samples

        if not (source_dir / split).is_dir():
            raise FileNotFoundError(f"{source_dir / split}: the source data has no {split} split")
        samples = list(iter_samples(source_dir / split))
        if not samples:
            raise ValueError(f"{source_dir / split}: no image (the source data's {split} split)")
        return np.stack([s.image for s in samples]), np.asarray([s.label for s in samples], dtype=np.int64)
    return read

