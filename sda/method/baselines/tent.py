"""Tent (Wang, Shelhamer, Liu, Olshausen, Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021), as the test-time-adaptation library runs it
(mariodoebler/test-time-adaptation ``classification/methods/tent.py``, commit 8b2ed63;
``cfgs/imagenet_c/tent.yaml``): BatchNorm on the test batch's statistics, one gradient step per batch on
the norm layers' affine parameters minimising the batch's mean softmax entropy; the prediction is the
forward the step is taken on.

Settings (ImageNet-C, ResNet-50): SGD lr 0.00025, momentum 0.9, Nesterov (the library's default
``OPTIM.NESTEROV``), no weight decay, batch 64, one step.
Below ``streams.window`` images a batch is seen in a sliding window, one step per turn of the window and
predictions on the window in between (the library's single-sample protocol,
:class:`~sda.method.baselines.base.Window`). Deviation, in every baseline here: the window's first image,
alone, gets the source model's prediction (a BatchNorm after global pooling cannot normalise one image).
"""

from __future__ import annotations

import torch
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ModelAdapter, entropy, reference_sgd
from sda.method.registry import StreamMethod, register_method

__all__ = ["Tent", "TentParams"]


class TentParams(Section):
    lr: float = Field(0.00025, gt=0, description="SGD learning rate (ImageNet, batch 64).")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(True, description="Nesterov momentum (the library's default).")


class Tent(ModelAdapter):
    """Tent: predict, then one entropy step on the norm layers' affine parameters."""

    def __init__(self, classifier, *, params: TentParams, window: int, device="cpu"):
        self.p = params
        super().__init__(classifier, window=window, device=device)

    def make_optimizer(self, params):
        return reference_sgd(params, self.p.lr, self.p.momentum, self.p.nesterov)

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        loss = entropy(logits).mean(0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.cost.forwards += len(x)
        self.cost.backwards += len(x)
        return logits


register_method(StreamMethod(
    name="tent", description="entropy minimisation on the norm layers", kind="model", params_model=TentParams,
    build=lambda ctx: Tent(ctx.source, params=ctx.params, window=ctx.window, device=ctx.device),
    reference="Wang et al., ICLR 2021"))
