"""Input adaptation in the method registry: the frozen classifiers on the original, projected or purified
image (``source``, ``dda``, ``dda_ens``, ``sda``, ``diffpure``). Each is a function of the image alone
(``per_image``): computed once and read by every stream. The first four read the frozen outputs every
method shares (:func:`sda.method.registry.frozen_outputs`); their classifier passes are counted as the
forwards they read.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sda.io.images import to_uint8, to_unit_range
from sda.method.baselines.base import ClassifierCost
from sda.method.registry import MethodContext, StreamInputs, StreamMethod, register_method
from sda.method.scoring import sda_logits
from sda.runtime import derive_seed

__all__ = ["FrozenLogits"]


class FrozenLogits:
    """``adapter(batch) -> logits``: a fixed function of the batch's frozen outputs, ``passes`` classifier
    forwards an image; ``unet_forward_equivalents``: the projection's cost, for the methods that read it."""

    def __init__(self, fn: Callable[[StreamInputs], torch.Tensor], passes: int, unet_fe: float = 0.0):
        self.fn, self.passes, self.unet_forward_equivalents = fn, passes, unet_fe
        self.cost = ClassifierCost()

    def reset(self) -> None:
        """Nothing carries over from one batch to the next."""

    def __call__(self, batch: StreamInputs) -> torch.Tensor:
        self.cost.forwards += self.passes * len(batch)
        return self.fn(batch)

    def extra(self):
        return {}


def _frozen(name: str, description: str, fn: Callable[[MethodContext, StreamInputs], torch.Tensor], passes: int,
            projected: bool) -> None:
    register_method(StreamMethod(
        name=name, description=description, kind="input", per_image=True,
        build=lambda ctx: FrozenLogits(lambda b: fn(ctx, b), passes, ctx.projection_fe if projected else 0.0)))


_frozen("source", "the source model on the original", lambda ctx, b: b.frozen["source_orig"], 1, False)
_frozen("dda", "the source model on the DDA projection", lambda ctx, b: b.frozen["source_proj"], 1, True)
_frozen("dda_ens", "DDA's ensemble: softmax sum over original and projection",
        lambda ctx, b: b.frozen["source_orig"].softmax(1) + b.frozen["source_proj"].softmax(1), 2, True)
_frozen("sda", "SDA: source(original) + aligned(projection), raw logit sum",
        lambda ctx, b: sda_logits(b.frozen["source_orig"], b.frozen["aligned_proj"], fallback=ctx.fallback), 2, True)


class DiffPure:
    """DiffPure (Nie et al., ICML 2022): the original diffused to depth t* and denoised back
    (:func:`sda.method.diffpure.purify`, each image's noise from its key), then the source model."""

    def __init__(self, ctx: MethodContext):
        from sda.method.diffpure import diffpure_depth

        if ctx.diffusion is None:
            raise ValueError("diffpure needs the diffusion model (data/diffusion_finetune)")
        self.unet, self.sched, self.null_label, self.respacing = ctx.diffusion
        self.N = diffpure_depth(ctx.streams.diffpure_t, self.sched.config.num_train_timesteps, self.respacing)
        self.source, self.device, self.seed = ctx.source, ctx.device, ctx.seed
        self.unet_forward_equivalents = float(self.N)
        self.cost = ClassifierCost()

    def reset(self) -> None:
        """Nothing carries over."""

    def __call__(self, batch: StreamInputs) -> torch.Tensor:
        from sda.method.diffpure import purify

        x = to_unit_range(batch.originals, self.device)
        labels = None if self.null_label is None else torch.full((len(x),), self.null_label, dtype=torch.long)
        pure = to_uint8(purify(self.unet, self.sched, x, batch.keys, N=self.N, respacing=self.respacing,
                               seed=derive_seed(self.seed, "diffpure"), class_labels=labels))
        self.cost.forwards += len(batch)
        return self.source.logits(np.asarray(pure), device=self.device)

    def extra(self):
        return {"respaced_steps": self.N, "t": round(self.N / (self.respacing - 1), 3)}


register_method(StreamMethod(name="diffpure", description="DiffPure: diffuse to t*, denoise, classify", kind="input",
                             per_image=True, needs_diffusion=True, build=DiffPure, reference="Nie et al., ICML 2022"))
