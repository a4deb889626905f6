"""SDA with adapted classifiers, behind a label-free guard (``sda+bn``, ``sda+tent``).

SDA's two classifiers are each adapted on their own input, the source model on the originals and the
aligned model on the projections (by :mod:`sda.method.bn` or :mod:`sda.method.tent`), and their logits
summed as SDA sums them. On an i.i.d. stream that beats both frozen SDA and the adapted source model; on a
stream whose batches hold few classes, the adapted statistics are those of those classes and the sum
falls below the unadapted source model. So a guard, which sees no label, decides per batch:

1. *too few images*: fewer than ``min_images`` seen since the last reset: frozen SDA;
2. *concentrated*: over the last ``window`` images, frozen SDA's predicted classes (stream-independent,
   so the guard's own input does not move with the adaptation) have an effective number of classes
   (exp of the entropy of their histogram) below ``min_class_fraction`` of min(classes, images): the
   stream is class-correlated: frozen SDA, and the adapters are not fed the batch;
3. *less sure*: the adapted sum's mean entropy on the batch exceeds the frozen sum's by more than
   ``max_entropy_rise`` nats: frozen SDA for that batch.

Otherwise the adapted sum. Every decision is counted (:attr:`GuardedSda.decisions`).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Callable

import numpy as np
import torch

from sda.method.norm_layers import entropy

__all__ = ["Guard", "GuardedSda", "effective_classes"]


def effective_classes(predictions: np.ndarray) -> float:
    """exp(entropy) of the histogram of int ``predictions`` (N,): 1 for one class, k for k equally
    frequent classes (the perplexity of the predicted labels)."""
    counts = np.bincount(np.asarray(predictions))
    p = counts[counts > 0] / counts.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


class Guard:
    """The label-free decision of :class:`GuardedSda` (module docstring): :meth:`check` before the
    adapters see a batch, :meth:`less_sure` after."""

    def __init__(self, *, num_classes: int, window: int, min_images: int, min_class_fraction: float,
                 max_entropy_rise: float):
        self.num_classes, self.min_images = num_classes, min_images
        self.min_class_fraction, self.max_entropy_rise = min_class_fraction, max_entropy_rise
        self.recent: deque[int] = deque(maxlen=window)

    def reset(self) -> None:
        self.recent.clear()

    def check(self, frozen_predictions: np.ndarray) -> str | None:
        """Record a batch's frozen predictions (int (B,)); the reason not to adapt on it, or None."""
        self.recent.extend(int(p) for p in frozen_predictions)
        if len(self.recent) < self.min_images:
            return "too_few"
        seen = np.fromiter(self.recent, dtype=np.int64)
        if effective_classes(seen) < self.min_class_fraction * min(self.num_classes, len(seen)):
            return "concentrated"
        return None

    def less_sure(self, adapted: torch.Tensor, frozen: torch.Tensor) -> bool:
        """Whether the adapted logits (B, C) are less sure than the frozen ones by more than the margin."""
        return float(entropy(adapted).mean() - entropy(frozen).mean()) > self.max_entropy_rise


class GuardedSda:
    """``combo(originals, projections, frozen_source, frozen_aligned) -> logits (B, C)``: SDA's sum of
    the adapted classifiers where the guard allows it, else frozen SDA's sum. ``originals`` /
    ``projections`` uint8 (B, H, W, 3); ``frozen_*`` the frozen models' logits on them (B, C)."""

    def __init__(self, source: Callable[[np.ndarray], torch.Tensor], aligned: Callable[[np.ndarray], torch.Tensor],
                 guard: Guard):
        self.source, self.aligned, self.guard = source, aligned, guard
        self.decisions: Counter[str] = Counter()

    def reset(self) -> None:
        for adapter in (self.source, self.aligned):
            adapter.reset()
        self.guard.reset()

    def __call__(self, originals: np.ndarray, projections: np.ndarray, frozen_source: torch.Tensor,
                 frozen_aligned: torch.Tensor) -> torch.Tensor:
        frozen = frozen_source + frozen_aligned
        reason = self.guard.check(frozen.argmax(1).numpy())
        if reason is not None:
            self.decisions[reason] += len(originals)
            return frozen
        adapted = self.source(originals) + self.aligned(projections)
        if self.guard.less_sure(adapted, frozen):
            self.decisions["less_sure"] += len(originals)
            return frozen
        self.decisions["adapted"] += len(originals)
        return adapted
