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
3. *mixed*: over the last ``window`` images, the originals' feature statistics are more spread than
   the projections' by more than ``max_spread_gap`` (:func:`spread_gap`): the stream mixes domains, the
   batch statistics are those of no image's domain: frozen SDA, and the adapters are not fed the batch.
   The projection takes every domain to the source domain and keeps the content, so the same images'
   projections are the reference: what the originals spread more is the spread of their domains;
4. *less sure*: the adapted sum's mean entropy on the batch exceeds the frozen sum's by more than
   ``max_entropy_rise`` nats: frozen SDA for that batch.

Otherwise the adapted sum. Every decision is counted (:attr:`GuardedSda.decisions`).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Callable

import numpy as np
import torch

from sda.method.norm_layers import ClassifierCost, entropy
from sda.models.classifiers import Classifier, to_model_input

__all__ = ["Guard", "GuardedSda", "NormInputProfile", "effective_classes", "spread_gap"]


def effective_classes(predictions: np.ndarray) -> float:
    """exp(entropy) of the histogram of int ``predictions`` (N,): 1 for one class, k for k equally
    frequent classes (the perplexity of the predicted labels)."""
    counts = np.bincount(np.asarray(predictions))
    p = counts[counts > 0] / counts.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


class NormInputProfile:
    """``profile(images uint8 (B, H, W, 3)) -> float64 (B, K)``: per image, the log of each channel's
    variance over the spatial positions at the input of every BatchNorm2d layer of the frozen ``classifier``
    (eval mode, so an image's row depends on that image alone); ``weights`` (K,) sum to 1, each layer's
    channels sharing 1 / layers. One classifier forward per image, counted in ``cost``. A model with no
    BatchNorm (Swin, ConvNeXt) gives K = 0: nothing to compare, and its ``bn`` has no batch statistics."""

    def __init__(self, classifier: Classifier, device: torch.device | str = "cpu"):
        self.classifier, self.device = classifier, torch.device(device)
        self.layers = [m for m in classifier.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        channels = [m.num_features for m in self.layers]
        self.weights = np.concatenate([np.full(c, 1.0 / (c * len(channels))) for c in channels]) if channels else np.zeros(0)
        self.cost = ClassifierCost()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        if not self.layers:
            return np.zeros((len(images), 0))
        rows: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, inp, _out: rows.append(
            inp[0].float().flatten(2).var(2).add(1e-5).log().cpu())) for m in self.layers]
        module = self.classifier.module
        was_training = module.training
        try:
            module.eval()
            module(to_model_input(images, **self.classifier.preprocessing, device=self.device))
        finally:
            module.train(was_training)
            for h in hooks:
                h.remove()
        self.cost.forwards += len(images)
        return torch.cat(rows, 1).double().numpy()


def spread_gap(originals: np.ndarray, projections: np.ndarray, weights: np.ndarray) -> float:
    """How much more the originals' profiles (N, K) (:class:`NormInputProfile`) spread over the images than
    their projections' do: the ``weights``-mean over columns of the standard deviation over rows,
    originals minus projections (0 for fewer than 2 rows or K = 0)."""
    if len(originals) < 2 or not len(weights):
        return 0.0
    return float(weights @ (originals.std(0) - projections.std(0)))


class Guard:
    """The label-free decision of :class:`GuardedSda` (module docstring): :meth:`check` before the
    adapters see a batch, :meth:`less_sure` after."""

    def __init__(self, *, num_classes: int, window: int, min_images: int, min_class_fraction: float,
                 max_entropy_rise: float, max_spread_gap: float | None = None):
        self.num_classes, self.min_images = num_classes, min_images
        self.min_class_fraction, self.max_entropy_rise = min_class_fraction, max_entropy_rise
        self.max_spread_gap = max_spread_gap
        self.recent: deque[int] = deque(maxlen=window)
        self.profiles: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=window)

    def reset(self) -> None:
        self.recent.clear()
        self.profiles.clear()

    def check(self, frozen_predictions: np.ndarray, profiles: tuple[np.ndarray, np.ndarray] | None = None,
              weights: np.ndarray | None = None) -> str | None:
        """Record a batch's frozen predictions (int (B,)) and, for the *mixed* check, its ``profiles``
        (originals', projections', each (B, K), :class:`NormInputProfile`, with its ``weights``); the
        reason not to adapt on it, or None."""
        self.recent.extend(int(p) for p in frozen_predictions)
        if profiles is not None:
            self.profiles.extend(zip(*profiles))
        if len(self.recent) < self.min_images:
            return "too_few"
        seen = np.fromiter(self.recent, dtype=np.int64)
        if effective_classes(seen) < self.min_class_fraction * min(self.num_classes, len(seen)):
            return "concentrated"
        if self.max_spread_gap is not None and profiles is not None and weights is not None:
            orig, proj = (np.stack(p) for p in zip(*self.profiles))
            if spread_gap(orig, proj, weights) > self.max_spread_gap:
                return "mixed"
        return None

    def less_sure(self, adapted: torch.Tensor, frozen: torch.Tensor) -> bool:
        """Whether the adapted logits (B, C) are less sure than the frozen ones by more than the margin."""
        return float(entropy(adapted).mean() - entropy(frozen).mean()) > self.max_entropy_rise


class GuardedSda:
    """``combo(originals, projections, frozen_source, frozen_aligned) -> logits (B, C)``: SDA's sum of
    the adapted classifiers where the guard allows it, else frozen SDA's sum. ``originals`` /
    ``projections`` uint8 (B, H, W, 3); ``frozen_*`` the frozen models' logits on them (B, C);
    ``profile``: the source model's :class:`NormInputProfile`, for the *mixed* check (None: no such check)."""

    def __init__(self, source: Callable[[np.ndarray], torch.Tensor], aligned: Callable[[np.ndarray], torch.Tensor],
                 guard: Guard, profile: NormInputProfile | None = None):
        self.source, self.aligned, self.guard, self.profile = source, aligned, guard, profile
        self.decisions: Counter[str] = Counter()

    def reset(self) -> None:
        for adapter in (self.source, self.aligned):
            adapter.reset()
        self.guard.reset()

    def __call__(self, originals: np.ndarray, projections: np.ndarray, frozen_source: torch.Tensor,
                 frozen_aligned: torch.Tensor) -> torch.Tensor:
        frozen = frozen_source + frozen_aligned
        profiles = None if self.profile is None else (self.profile(originals), self.profile(projections))
        reason = self.guard.check(frozen.argmax(1).numpy(), profiles, None if self.profile is None else self.profile.weights)
        if reason is not None:
            self.decisions[reason] += len(originals)
            return frozen
        adapted = self.source(originals) + self.aligned(projections)
        if self.guard.less_sure(adapted, frozen):
            self.decisions["less_sure"] += len(originals)
            return frozen
        self.decisions["adapted"] += len(originals)
        return adapted
