"""CoTTA (Wang, Fink, Van Gool, Dai, "Continual Test-Time Domain Adaptation", CVPR 2022), as the
test-time-adaptation library runs it (mariodoebler/test-time-adaptation ``classification/methods/cotta.py``,
commit 8b2ed63; ``cfgs/imagenet_c/cotta.yaml``):

- a student (every parameter trains; BatchNorm on test-batch statistics), a mean teacher (EMA of the
  student, momentum 0.999) and the frozen source model (the anchor);
- where the anchor's mean confidence on the batch is below ``ap``, the teacher's prediction is the mean of
  its logits over ``augmentations`` (32) augmented copies of the batch (``sda.method.baselines.augment``),
  else its logits on the batch;
- the student's loss: the symmetric cross-entropy to the teacher's prediction (ImageNet's form); one SGD
  step; the teacher follows; each trainable weight is restored to its source value with probability
  ``restore`` (0.001);
- the prediction is the teacher's.

Settings: ImageNet-C: SGD lr 0.01, momentum 0.9, Nesterov, batch 64, restore 0.001, ap 0.1. ``ap`` is a
confidence threshold and scales with the classes: at 10 classes the top softmax is never below 0.1, so the
ImageNet value would switch the augmentations off; the default here is the library's CIFAR-10 value 0.92
for a model of at most 100 classes, 0.1 above (switch ``ap``). The augmentations make it ~35 classifier
passes an image: ``images_per_domain`` runs it on a seeded subset of each domain (the table says so).
Below ``streams.window`` images: the window (:class:`~sda.method.baselines.base.Window`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from pydantic import Field

from sda.config import Section
from sda.method.baselines.augment import SeededAugment, tta_transform
from sda.method.baselines.base import (ModelAdapter, ema_update, reference_sgd, symmetric_cross_entropy,
                                       use_test_batch_statistics)
from sda.method.registry import StreamMethod, register_method
from sda.runtime import derive_seed

__all__ = ["Cotta", "CottaParams"]


class CottaParams(Section):
    lr: float = Field(0.01, gt=0, description="SGD learning rate (ImageNet, batch 64).")
    momentum: float = Field(0.9, ge=0, lt=1)
    teacher_momentum: float = Field(0.999, gt=0, le=1, description="EMA of the teacher.")
    restore: float = Field(0.001, ge=0, le=1, description="Probability of restoring each weight to its source value.")
    ap: float | None = Field(None, gt=0, le=1, description=(
        "Augment where the anchor's mean confidence is below this. null: 0.92 (the library's CIFAR-10 value) "
        "for a model of at most 100 classes, 0.1 (ImageNet) above."))
    augmentations: int = Field(32, ge=1, description="Augmented copies the teacher averages over.")
    images_per_domain: int | None = Field(32, ge=1, description=(
        "CoTTA on a seeded subset of each domain (null: every image); the table says on how many."))


class Cotta(ModelAdapter):
    """CoTTA; ``augmented`` counts the batches the teacher augmented."""

    def __init__(self, classifier, *, params: CottaParams, window: int, seed: int, device="cpu"):
        self.p = params
        super().__init__(classifier, window=window, device=device)
        self.teacher = copy.deepcopy(self.model)
        self.anchor = copy.deepcopy(self.model)
        for m in (self.teacher, self.anchor):
            for q in m.parameters():
                q.detach_()
        self.ap = params.ap or (0.92 if self.num_classes <= 100 else 0.1)
        self.augment: SeededAugment | None = None  # made at the first batch, for its side in pixels
        self.seed = seed
        self._rng = torch.Generator().manual_seed(derive_seed(seed, "cotta", "restore"))
        self.augmented = 0

    def configure_model(self, model: nn.Module) -> list[nn.Parameter]:
        use_test_batch_statistics(model)
        model.requires_grad_(True)
        return [p for n, m in model.named_modules() for pn, p in m.named_parameters(recurse=False)
                if pn in ("weight", "bias")]

    def make_optimizer(self, params):
        return reference_sgd(params, self.p.lr, self.p.momentum)

    def models(self):
        return [self.model, self.teacher, self.anchor]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.cost.forwards += len(x)
        return self.teacher(x)

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is None:
            self.augment = SeededAugment(tta_transform(x.shape[-1]), derive_seed(self.seed, "cotta", "augment"))
        outputs = self.model(x)
        with torch.no_grad():
            anchor_prob = self.anchor(x).softmax(1).max(1)[0]
        passes = 2
        if anchor_prob.mean(0) < self.ap:
            unit = self.unit_range(x)
            with torch.no_grad():
                teacher = torch.stack([self.teacher(self.normalise(self.augment(unit))).detach()
                                       for _ in range(self.p.augmentations)]).mean(0)
            passes += self.p.augmentations
            self.augmented += 1
        else:
            teacher = self.teacher(x)
            passes += 1
        loss = symmetric_cross_entropy(outputs, teacher).mean(0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        ema_update(self.teacher, self.model, self.p.teacher_momentum, update_all=True)
        if self.p.restore > 0:  # stochastic restore
            source = self._initial[0][0]
            with torch.no_grad():
                for n, m in self.model.named_modules():
                    for pn, p in m.named_parameters(recurse=False):
                        if pn in ("weight", "bias") and p.requires_grad:
                            mask = (torch.rand(p.shape, generator=self._rng) < self.p.restore).float().to(p.device)
                            key = f"{n}.{pn}" if n else pn
                            p.data = source[key] * mask + p * (1.0 - mask)
        self.cost.forwards += passes * len(x)
        self.cost.backwards += len(x)
        return teacher

    def extra(self):
        return {"batches_augmented": self.augmented}


register_method(StreamMethod(
    name="cotta", description="mean teacher with augmentation averaging and stochastic restore", kind="model",
    params_model=CottaParams, images_per_domain=lambda p: p.images_per_domain,
    build=lambda ctx: Cotta(ctx.source, params=ctx.params, window=ctx.window, seed=ctx.seed, device=ctx.device),
    reference="Wang et al., CVPR 2022"))
