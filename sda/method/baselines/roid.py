"""ROID (Marsden, Döbler, Yang, "Universal Test-time Adaptation through Weight Ensembling, Diversity
Weighting, and Prior Correction", WACV 2024), as the test-time-adaptation library runs it
(mariodoebler/test-time-adaptation ``classification/methods/roid.py``, commit 8b2ed63; ``conf.py`` ``ROID``):

- self-training with the soft likelihood ratio loss, each image weighted by certainty (its negative
  entropy) times diversity (1 - cosine similarity of its softmax to a moving average (0.9) of the batches'
  mean softmax), both min-max normalised over the batch, exp(product / temperature 1/3); images of
  diversity weight under the batch's mean drop out; the loss summed and divided by the stream's batch size;
- a consistency term: the symmetric cross-entropy between the outputs of an augmented copy
  (``sda.method.baselines.augment``, no blur or noise, reflect padding) and the outputs, same weights;
- one SGD step on the norm layers' affine parameters (BatchNorm on test-batch statistics), then weight
  ensembling: each of them <- 0.99 itself + 0.01 its source value;
- prior correction of the outputs: the logits times a smoothed estimate of the batch's label prior
  (the library multiplies the logits, not the probabilities; so does this).

Deviation: where the weighting keeps one image and the model's last BatchNorm sees 1x1 features (a
small input), the consistency forward cannot normalise it and is skipped for that batch (the library
raises). Settings: ImageNet-C: SGD lr 0.00025, momentum 0.9, Nesterov, batch 64. Below ``streams.window``
images: the window (:class:`~sda.method.baselines.base.Window`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field

from sda.config import Section
from sda.method.baselines.augment import SeededAugment, tta_transform
from sda.method.baselines.base import ModelAdapter, ema_update, entropy, reference_sgd, symmetric_cross_entropy
from sda.method.registry import StreamMethod, register_method
from sda.runtime import derive_seed

__all__ = ["Roid", "RoidParams", "prior_correction"]


class RoidParams(Section):
    lr: float = Field(0.00025, gt=0, description="SGD learning rate (ImageNet, batch 64).")
    momentum: float = Field(0.9, ge=0, lt=1)
    weighting: bool = Field(True, description="Certainty and diversity weights.")
    prior_correction: bool = Field(True, description="Correct the outputs with the batch's smoothed label prior.")
    consistency: bool = Field(True, description="Consistency loss to an augmented copy.")
    momentum_src: float = Field(0.99, gt=0, le=1, description="Weight ensembling: param <- m param + (1 - m) source.")
    momentum_probs: float = Field(0.9, gt=0, lt=1, description="Moving average of the mean softmax (diversity).")
    temperature: float = Field(1 / 3, gt=0, description="Of the weights.")


def prior_correction(logits: torch.Tensor) -> torch.Tensor:
    """The library's prior correction: logits (N, C) times the batch's mean softmax, smoothed towards
    uniform by max(1/N, 1/C) / its largest entry."""
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / logits.shape[0], 1 / logits.shape[1]) / torch.max(prior)
    return logits * ((prior + smooth) / (1 + smooth * logits.shape[1]))


def _slr(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5) -> torch.Tensor:
    probs = torch.clamp(logits.softmax(1), min=0.0, max=clip)
    return -(probs * torch.log(probs / (torch.ones_like(probs) - probs) + eps)).sum(1)


class Roid(ModelAdapter):
    """ROID."""

    def __init__(self, classifier, *, params: RoidParams, window: int, seed: int, batch_size: int, device="cpu"):
        self.p = params
        super().__init__(classifier, window=window, device=device)
        self.source_model = copy.deepcopy(self.model)
        for q in self.source_model.parameters():
            q.detach_()
        self.batch_size, self.seed = batch_size, seed
        self.augment: SeededAugment | None = None
        self.reset_state()

    def make_optimizer(self, params):
        return reference_sgd(params, self.p.lr, self.p.momentum)

    def models(self):
        return [self.source_model, self.model]

    def reset_state(self) -> None:
        self.class_probs = torch.full((self.num_classes,), 1 / self.num_classes, device=self.device)

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is None:
            self.augment = SeededAugment(tta_transform(x.shape[-1], padding_mode="reflect", cotta_augs=False),
                                         derive_seed(self.seed, "roid", "augment"))
        outputs = self.model(x)
        self.cost.forwards += len(x)
        if self.p.weighting:
            with torch.no_grad():
                div = 1 - F.cosine_similarity(self.class_probs.unsqueeze(0), outputs.softmax(1), dim=1)
                div = (div - div.min()) / (div.max() - div.min())
                mask = div < div.mean()
                cert = -entropy(outputs)
                cert = (cert - cert.min()) / (cert.max() - cert.min())
                weights = torch.exp(div * cert / self.p.temperature)
                weights[mask] = 0.0
                self.class_probs = self.p.momentum_probs * self.class_probs + (1 - self.p.momentum_probs) * outputs.softmax(1).mean(0)
        else:
            mask = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            weights = torch.ones(len(x), device=x.device)
        loss = _slr(outputs)
        if self.p.weighting:
            loss = (loss * weights)[~mask]
        loss = loss.sum() / self.batch_size
        if self.p.consistency and int((~mask).sum()) > 0:
            kept = x[~mask]
            try:
                augmented = self.model(self.normalise(self.augment(self.unit_range(kept))))
            except ValueError:  # one kept image whose last BatchNorm sees 1x1 features: no batch statistics
                augmented = None
            if augmented is not None:
                loss = loss + (symmetric_cross_entropy(augmented, outputs[~mask]) * weights[~mask]).sum() / self.batch_size
                self.cost.forwards += len(kept)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.cost.backwards += len(x)
        ema_update(self.model, self.source_model, self.p.momentum_src)
        with torch.no_grad():
            return prior_correction(outputs) if self.p.prior_correction else outputs


register_method(StreamMethod(
    name="roid", description="weighted self-training, weight ensembling, prior correction", kind="model",
    params_model=RoidParams,
    build=lambda ctx: Roid(ctx.source, params=ctx.params, window=ctx.window, seed=ctx.seed,
                           batch_size=ctx.batch_size, device=ctx.device),
    reference="Marsden et al., WACV 2024"))
