"""SDA combined with stream methods: SDA's classifiers adapted behind a label-free guard (``sda+bn``,
``sda+tent``), LAME on SDA's summed logits (``sda+lame``), and the guard choosing between the three
(``sda+bn+lame``). Registered with the method registry (:mod:`sda.method.registry`).

SDA's two classifiers are each adapted on their own input, the source model on the originals and the
aligned model on the projections (by :mod:`sda.method.baselines.bn` or ``tent``), and their logits
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

``sda+lame``: LAME (:mod:`sda.method.baselines.lame`) with SDA's summed logits as its unary terms and a
kNN graph over the images' features (by default the source model's on the originals; the aligned model's
on the projections, or both side by side, are the other choices, ``streams.sda_lame``): on a batch of few
classes the graph pulls an image to its neighbours' class, where SDA alone decides each image on its own.
``sda+bn+lame``: the guard as ``sda+bn``, but where it finds the batch *concentrated*, ``sda+lame``'s
output instead of frozen SDA's.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ClassifierCost, Window, entropy
from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.lame import Affinity, LameParams, lame_outputs
from sda.method.baselines.tent import Tent
from sda.method.registry import MethodContext, StreamInputs, StreamMethod, register_method
from sda.models.classifiers import Classifier, to_model_input

__all__ = ["Guard", "GuardedSda", "NormInputProfile", "SdaLame", "SdaLameParams", "effective_classes", "guarded_sda",
           "sda_lame", "spread_gap"]


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


class SdaLameParams(Section):
    affinity: Affinity = Field("knn", description=(
        "The graph over the batch: knn (chosen on the source val split, docs/streams.md) | rbf | linear."))
    knn: int = Field(5, ge=1, description="Neighbours of each image in the graph.")
    features: Literal["both", "aligned", "source"] = Field("source", description=(
        "Whose features: source (the source model's on the originals; chosen on the source val split) | aligned "
        "(the aligned model's on the projections) | both (side by side)."))


def sda_lame(batch: StreamInputs, params: SdaLameParams, fallback: bool = False) -> torch.Tensor:
    """LAME over SDA's summed logits of ``batch`` and its models' features (:class:`SdaLameParams`): log Y (B, C)."""
    logits = batch.frozen["aligned_proj"] if fallback else batch.frozen["source_orig"] + batch.frozen["aligned_proj"]
    parts = {"aligned": [batch.frozen["aligned_proj_features"]], "source": [batch.frozen["source_orig_features"]]}
    parts["both"] = parts["aligned"] + parts["source"]
    features = torch.cat([F.normalize(f.float(), dim=-1) for f in parts[params.features]], 1)
    return lame_outputs(logits, features, LameParams(affinity=params.affinity, knn=params.knn))


class SdaLame:
    """``sda+lame``: :func:`sda_lame` on each batch (or the window holding it); nothing is learnt."""

    unet_forward_equivalents = 0.0

    def __init__(self, params: SdaLameParams, *, window: int, fallback: bool, projection_fe: float):
        self.p, self.fallback, self.window = params, fallback, Window(window)
        self.unet_forward_equivalents = projection_fe
        self.cost = ClassifierCost()

    def reset(self) -> None:
        self.window.reset()

    @torch.no_grad()
    def __call__(self, batch: StreamInputs) -> torch.Tensor:
        keys = ("source_orig", "aligned_proj", "source_orig_features", "aligned_proj_features")
        widths = [batch.frozen[k].shape[1] for k in keys]
        both, rows = self.window(torch.cat([batch.frozen[k].float() for k in keys], 1))
        cols = np.cumsum([0, *widths])
        frozen = {k: both[:, a:b] for k, a, b in zip(keys, cols[:-1], cols[1:])}
        self.cost.forwards += 2 * len(batch)  # the two frozen forwards it reads
        return sda_lame(replace(batch, frozen=frozen), self.p, self.fallback)[rows]

    def extra(self):
        return {}


def _swap(batch: StreamInputs, images: np.ndarray, logits: torch.Tensor) -> StreamInputs:
    """The batch as the aligned model's adapter sees it: the projections as its images."""
    return StreamInputs(images, batch.projections, batch.keys, {"source_orig": logits})


class GuardedSda:
    """``combo(batch: StreamInputs) -> logits (B, C)``: SDA's sum of the adapted classifiers where the
    guard allows it, else frozen SDA's sum (or, with ``concentrated``, that function of the batch where the
    guard finds it concentrated: ``sda+bn+lame``). ``source`` / ``aligned``: the model adapters of the
    source model (fed the originals) and of the aligned model (fed the projections); ``profile``: the source
    model's :class:`NormInputProfile`, for the *mixed* check (None: no such check)."""

    def __init__(self, source, aligned, guard: Guard, profile: NormInputProfile | None = None,
                 concentrated=None, projection_fe: float = 0.0):
        self.source, self.aligned, self.guard, self.profile = source, aligned, guard, profile
        self.concentrated = concentrated
        self.decisions: Counter[str] = Counter()
        self.unet_forward_equivalents = projection_fe
        self._cost = ClassifierCost()

    @property
    def cost(self) -> ClassifierCost:
        total = ClassifierCost(self._cost.forwards, self._cost.backwards)
        for part in (self.source, self.aligned, self.profile):
            if part is not None:
                total.add(part.cost)
        return total

    def reset(self) -> None:
        for adapter in (self.source, self.aligned):
            adapter.reset()
        if self.concentrated is not None:
            self.concentrated.reset()
        self.guard.reset()

    def __call__(self, batch: StreamInputs) -> torch.Tensor:
        originals, projections = batch.originals, batch.projections
        frozen = batch.frozen["source_orig"] + batch.frozen["aligned_proj"]
        self._cost.forwards += 2 * len(batch)  # the frozen models' logits the guard and the fallback read
        profiles = None
        if self.profile is not None and "source_orig_profile" in batch.frozen:  # shared, computed once per image
            profiles = (batch.frozen["source_orig_profile"].double().numpy(),
                        batch.frozen["source_proj_profile"].double().numpy())
            self._cost.forwards += 2 * len(batch)
        elif self.profile is not None:
            profiles = (self.profile(originals), self.profile(projections))
        reason = self.guard.check(frozen.argmax(1).numpy(), profiles, None if self.profile is None else self.profile.weights)
        if reason is not None:
            self.decisions[reason] += len(originals)
            if reason == "concentrated" and self.concentrated is not None:
                return self.concentrated(batch)
            return frozen
        adapted = self.source(batch) + self.aligned(_swap(batch, projections, batch.frozen["aligned_proj"]))
        if self.guard.less_sure(adapted, frozen):
            self.decisions["less_sure"] += len(originals)
            return frozen
        self.decisions["adapted"] += len(originals)
        return adapted

    def extra(self):
        return {"guard": {k: int(v) for k, v in sorted(self.decisions.items())}}


def guarded_sda(ctx: MethodContext, inner: str, concentrated=None) -> GuardedSda:
    """``sda+<inner>``: both of SDA's classifiers adapted by ``inner`` (bn | tent) behind the guard of
    ``ctx.streams.guard`` (over ``ctx.guard_window`` images, else ``streams.window`` or 64)."""
    g = ctx.streams.guard
    if inner == "bn":
        make = lambda clf: BatchNormAdapter(clf, window=ctx.window, device=ctx.device)  # noqa: E731
    else:
        tent = ctx.streams.method_params("tent")
        make = lambda clf: Tent(clf, params=tent, window=ctx.window, device=ctx.device)  # noqa: E731
    guard = Guard(num_classes=ctx.num_classes, window=ctx.guard_window or ctx.streams.window or 64,
                  min_images=g.min_images, min_class_fraction=g.min_class_fraction,
                  max_entropy_rise=g.max_entropy_rise, max_spread_gap=g.max_spread_gap)
    return GuardedSda(make(ctx.source), make(ctx.aligned), guard,
                      None if g.max_spread_gap is None else NormInputProfile(ctx.source, ctx.device),
                      concentrated, ctx.projection_fe)


register_method(StreamMethod(
    name="sda+bn", description="SDA's classifiers on batch statistics, behind the guard", kind="combined",
    build=lambda ctx: guarded_sda(ctx, "bn")))
register_method(StreamMethod(
    name="sda+tent", description="SDA's classifiers adapted by Tent, behind the guard", kind="combined",
    build=lambda ctx: guarded_sda(ctx, "tent")))
register_method(StreamMethod(
    name="sda+lame", description="LAME on SDA's summed logits over both models' features", kind="combined",
    params_model=SdaLameParams, section="sda_lame",
    build=lambda ctx: SdaLame(ctx.params, window=ctx.window, fallback=ctx.fallback, projection_fe=ctx.projection_fe)))
register_method(StreamMethod(
    name="sda+bn+lame", description="the guard: sda+bn on i.i.d.-like batches, sda+lame on concentrated ones",
    kind="combined", params_model=SdaLameParams, section="sda_lame",
    build=lambda ctx: guarded_sda(ctx, "bn", SdaLame(ctx.params, window=0, fallback=ctx.fallback,
                                                     projection_fe=ctx.projection_fe))))
