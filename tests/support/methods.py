"""Stream batches for the :mod:`sda.method` tests: random uint8 images, a batch with a classifier's frozen
outputs on them (:class:`sda.method.registry.StreamInputs`) and the context a method is built from."""

from __future__ import annotations

import numpy as np
import torch

from sda.config import Streams
from sda.method.registry import MethodContext, StreamInputs


def images(n, seed=0):
    """``n`` random uint8 (16, 16, 3) images, drawn from ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def inputs(x, clf, projections=None):
    """A stream batch of uint8 images ``x`` with ``clf``'s frozen outputs (as the aligned model's too)."""
    p = x if projections is None else projections
    so, sf = clf.logits_and_features(x)
    ap, af = clf.logits_and_features(p)
    return StreamInputs(x, p, [f"k{i}" for i in range(len(x))],
                        {"source_orig": so, "source_orig_features": sf, "source_proj": ap, "aligned_proj": ap,
                         "aligned_proj_features": af})


def method_context(clf, **kw):
    """A 10-class method context on the CPU, ``clf`` as both models; the source data: 40 images of class 0."""
    return MethodContext(source=clf, aligned=clf, streams=Streams(), params=None, device=torch.device("cpu"), seed=0,
                         num_classes=10, source_split=lambda split: (images(40, seed=9), np.zeros(40, dtype=np.int64)),
                         **kw)
