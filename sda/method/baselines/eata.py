"""EATA (Niu, Wu, Zhang, Chen, Zheng, Zhao, Tan, "Efficient Test-Time Model Adaptation without
Forgetting", ICML 2022), as the test-time-adaptation library runs it (mariodoebler/test-time-adaptation
``classification/methods/eata.py``, commit 8b2ed63; ``cfgs/imagenet_c/eata.yaml``):

1. reliable images: entropy below ``margin`` (0.4 ln C);
2. non-redundant images: among those, the ones whose softmax has cosine similarity under ``d_margin``
   with the moving average (0.9) of the selected images' softmax;
3. the selected images' entropies, each weighted by 1 / exp(entropy - margin), averaged over the selected
   images, plus ``fisher_alpha`` times the Fisher-weighted squared distance of the norm layers' affine
   parameters from the source ones (an EWC penalty against forgetting); one SGD step if any image is left.

The Fisher information is the mean squared gradient of the cross-entropy to the model's own predictions
over ``fisher_images`` source images (``fisher_split`` of the source data; the library: 2,000 ImageNet
train images), in batches of the stream's size, the model on their batch statistics. Source data without
that split (the ImageNet profile without ``imagenet.train_dir``): ETA, no penalty, with a warning.

Settings: ImageNet-C (ResNet-50): SGD lr 0.00025, momentum 0.9, Nesterov, batch 64, fisher_alpha 2000,
2,000 source images. ``d_margin``: the library's CIFAR-10 value 0.4 for a model of at most 100 classes,
its ImageNet value 0.05 above (the cosine similarity of two softmax vectors grows as the classes shrink:
at 10 classes 0.05 keeps almost no image), switch ``d_margin``. Below
``streams.window`` images: the window (:class:`~sda.method.baselines.base.Window`).
"""

from __future__ import annotations

import logging
import math
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ModelAdapter, entropy, reference_sgd
from sda.method.registry import StreamMethod, register_method
from sda.runtime import derive_seed

__all__ = ["Eata", "EataParams", "fisher_information"]


class EataParams(Section):
    lr: float = Field(0.00025, gt=0, description="SGD learning rate (ImageNet, batch 64).")
    momentum: float = Field(0.9, ge=0, lt=1)
    margin: float = Field(0.4, gt=0, description="Reliable entropy: below margin * ln(classes).")
    d_margin: float | None = Field(None, gt=0, description=(
        "Redundancy: cosine similarity to the moving average of the softmax below this. null: the library's "
        "0.4 (CIFAR-10) for a model of at most 100 classes, 0.05 (ImageNet) above."))
    fisher_alpha: float = Field(2000.0, ge=0, description="Weight of the EWC penalty (0: ETA, no Fisher).")
    fisher_images: int = Field(2000, ge=1, description="Source images the Fisher information is estimated on.")
    fisher_split: str = Field("train", description="The source data's split they come from (train | val).")


def fisher_information(adapter: ModelAdapter, images: np.ndarray, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{parameter name: (mean squared gradient, source value)}`` of the adapter's trainable parameters:
    the cross-entropy to the model's own argmax, over ``images`` uint8 (N, H, W, 3) in batches of
    ``batch_size``, the model as configured (BatchNorm on each batch's statistics), as the library does."""
    model = adapter.model
    fishers: dict[str, list[torch.Tensor]] = {}
    batches = [images[i: i + batch_size] for i in range(0, len(images), batch_size)]
    with torch.enable_grad():
        for it, chunk in enumerate(batches, start=1):
            out = model(adapter.model_input(chunk))
            F.cross_entropy(out, out.max(1)[1]).backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    f = p.grad.detach() ** 2 + (fishers[name][0] if it > 1 else 0)
                    if it == len(batches):
                        f = f / it
                    fishers[name] = [f, p.detach().clone()]
            model.zero_grad(set_to_none=True)
    return {k: (v[0], v[1]) for k, v in fishers.items()}


class Eata(ModelAdapter):
    """EATA; ``selected`` counts the images that entered a loss, ``steps`` the updates. ``fishers``:
    :func:`fisher_information` computed once per source model and batch size (not a stream's cost)."""

    # per source module (weakly: a freed module's entry goes with it, and a new module at its address
    # cannot read it), then per (images, batch size, split): the Fisher of the last such setting
    _fisher_cache: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, dict]]" = weakref.WeakKeyDictionary()

    def __init__(self, classifier, *, params: EataParams, window: int, device="cpu",
                 source_images: np.ndarray | None = None, batch_size: int = 64):
        self.p = params
        super().__init__(classifier, window=window, device=device)
        self.margin = params.margin * math.log(self.num_classes)
        self.d_margin = params.d_margin or (0.4 if self.num_classes <= 100 else 0.05)
        self.probs: torch.Tensor | None = None
        self.selected = self.steps = 0
        self.fishers = None
        self.fisher_count = 0 if source_images is None else len(source_images)
        if params.fisher_alpha > 0 and source_images is not None:
            key = (len(source_images), batch_size, params.fisher_split)
            cached = self._fisher_cache.setdefault(classifier.module, {})
            if key not in cached:
                cached.clear()
                cached[key] = fisher_information(self, source_images, max(batch_size, 2))
            self.fishers = cached[key]

    def make_optimizer(self, params):
        return reference_sgd(params, self.p.lr, self.p.momentum)

    def reset_state(self) -> None:
        self.probs = None

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        ent = entropy(logits)
        keep1 = torch.where(ent < self.margin)
        ent = ent[keep1]
        probs = logits[keep1].softmax(1)
        if self.probs is not None:
            keep2 = torch.where(torch.abs(F.cosine_similarity(self.probs.unsqueeze(0), probs, dim=1)) < self.d_margin)
            ent, probs = ent[keep2], probs[keep2]
        if len(probs):
            with torch.no_grad():
                self.probs = probs.mean(0) if self.probs is None else 0.9 * self.probs + 0.1 * probs.mean(0)
        loss = ent.mul(1 / torch.exp(ent.clone().detach() - self.margin)).mean(0)
        if self.fishers is not None:
            loss = loss + sum(self.p.fisher_alpha * (self.fishers[n][0] * (p - self.fishers[n][1]) ** 2).sum()
                              for n, p in self.model.named_parameters() if n in self.fishers)
        self.cost.forwards += len(x)
        if len(ent):
            loss.backward()
            self.optimizer.step()
            self.cost.backwards += len(x)
            self.steps += 1
            self.selected += len(ent)
        self.optimizer.zero_grad()
        return logits

    def extra(self):
        return {"steps": self.steps, "images_selected": self.selected,
                "fisher_images": 0 if self.fishers is None else self.fisher_count}


def _build(ctx):
    p: EataParams = ctx.params
    images = None
    if p.fisher_alpha > 0:
        try:
            images, _ = ctx.source_split(p.fisher_split) if ctx.source_split else (None, None)
        except (FileNotFoundError, ValueError):
            images = None
        if images is None:  # ImageNet's source data holds no images unless imagenet.train_dir is set
            logging.getLogger("sda.streams").warning(
                "eata: no source %s images for the Fisher information: EATA runs as ETA (no EWC penalty); set "
                "streams.eata.fisher_split to a split the source data has", p.fisher_split)
        else:
            pick = np.random.default_rng(derive_seed(ctx.seed, "eata", "fisher")).permutation(len(images))[: p.fisher_images]
            images = images[np.sort(pick)]
    return Eata(ctx.source, params=p, window=ctx.window, device=ctx.device, source_images=images,
                batch_size=ctx.batch_size if ctx.batch_size > 1 else max(ctx.window, 2))


register_method(StreamMethod(
    name="eata", description="reliable, non-redundant entropy minimisation with an EWC penalty", kind="model",
    params_model=EataParams, build=_build, reference="Niu et al., ICML 2022"))
