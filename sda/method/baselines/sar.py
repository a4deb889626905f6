"""SAR (Niu, Wu, Zhang, Wen, Chen, Zhao, Tan, "Towards Stable Test-Time Adaptation in Dynamic Wild
World", ICLR 2023), as the authors' code (mr-eggplant/SAR ``sar.py``) and the test-time-adaptation library
(mariodoebler/test-time-adaptation ``classification/methods/sar.py``, commit 8b2ed63) run it:

1. reliable entropy: the images whose entropy is below ``margin`` (0.4 ln C) give the loss;
2. sharpness-aware minimisation (SAM, Foret et al., ICLR 2021, radius ``rho`` 0.05): the weights climb
   by ``rho`` along that loss's gradient, the *whole batch* is forwarded again there, the images reliable
   in both forwards give the second loss, whose gradient (at the climbed weights) is the step taken from
   the original weights;
3. model recovery: an exponential moving average (0.9) of the second loss below ``reset_below`` (0.2)
   means the model has collapsed: back to the source weights.

A quirk kept: the reference's reset (a recovery, or a stream's reset at a new domain) restores the SAM
wrapper's state but not its base SGD's, so the momentum buffers survive it; ``reset_momentum: true``
empties them too.

Norm layers on test-batch statistics; their affine parameters, except those of the last stage (names
holding ``layer4``, ``blocks.9``-``blocks.11`` or ``norm.``, and ``norm``), updated by SGD (ImageNet: lr
0.00025, momentum 0.9, no Nesterov: SAM's base optimiser; ViT / Swin: lr 0.001). Below ``streams.window`` images: the window
(:class:`~sda.method.baselines.base.Window`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ModelAdapter, entropy, norm_affine_parameters, use_test_batch_statistics
from sda.method.registry import StreamMethod, register_method

__all__ = ["Sar", "SarParams"]

SKIP = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")  # the authors' top layers, not adapted


class SarParams(Section):
    lr: float = Field(0.00025, gt=0, description="SGD learning rate (ImageNet, batch 64; ViT / Swin: 0.001).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (SAM's base optimiser, no Nesterov).")
    rho: float = Field(0.05, gt=0, description="SAM radius.")
    margin: float = Field(0.4, gt=0, description="Reliable entropy: below margin * ln(classes).")
    reset_below: float = Field(0.2, ge=0, description="Model recovery: reset when the loss's moving average is under.")
    reset_momentum: bool = Field(False, description=(
        "A reset also empties SGD's momentum. false: as the reference, whose reset restores the SAM wrapper's "
        "state but not its base optimiser's, so the momentum survives a reset (a domain change, a recovery)."))


class Sar(ModelAdapter):
    """SAR; ``resets`` counts the model recoveries, ``steps`` the updates taken."""

    def __init__(self, classifier, *, params: SarParams, window: int, device="cpu", arch: str = ""):
        self.p, self.arch = params, arch.lower().replace("-", "_")
        super().__init__(classifier, window=window, device=device)
        self.ema: float | None = None
        self.resets = self.steps = 0

    def configure_model(self, model: nn.Module) -> list[nn.Parameter]:
        use_test_batch_statistics(model)
        params = norm_affine_parameters(model, skip=SKIP)
        names = {id(p) for n, m in model.named_modules() if n == "norm" for p in m.parameters()}
        for p in params:
            if id(p) in names:
                p.requires_grad_(False)
        return [p for p in params if id(p) not in names]

    def make_optimizer(self, params):
        lr = 0.001 if ("vit_" in self.arch or "swin_" in self.arch) else self.p.lr
        return torch.optim.SGD(params, lr=lr, momentum=self.p.momentum)

    def reset_state(self) -> None:
        self.ema = None

    def restore_source(self) -> None:
        if self.p.reset_momentum:
            return super().restore_source()
        momentum = {k: v for k, v in self.optimizer.state.items()}  # the reference keeps its base optimiser's state
        super().restore_source()
        self.optimizer.state.update(momentum)

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.p.margin * math.log(self.num_classes)
        self.optimizer.zero_grad()
        logits = self.model(x)
        # 1. reliable entropy
        ent = entropy(logits)
        reliable = torch.where(ent < margin)
        ent[reliable].mean(0).backward()
        # 2. SAM: climb to w + e(w) along the gradient, forward the whole batch there, filter again
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2) if grads else torch.tensor(0.0)
        climbed = []
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    climbed.append((p, p.data.clone()))
                    p.add_(p.grad * (self.p.rho / (norm + 1e-12)).to(p))
        self.optimizer.zero_grad()
        ent2 = entropy(self.model(x))[reliable]
        loss2 = ent2[torch.where(ent2 < margin)].mean(0)
        value = loss2.item()
        if not np.isnan(value):
            self.ema = value if self.ema is None else 0.9 * self.ema + (1 - 0.9) * value  # the authors' arithmetic
        loss2.backward()
        with torch.no_grad():
            for p, old in climbed:
                p.data = old
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.cost.forwards += 2 * len(x)
        self.cost.backwards += 2 * len(x)
        self.steps += int(not np.isnan(value))
        # 3. model recovery
        if self.ema is not None and self.ema < self.p.reset_below:
            self.restore_source()
            self.resets += 1
        return logits

    def extra(self):
        return {"model_resets": self.resets, "steps": self.steps}


register_method(StreamMethod(
    name="sar", description="sharpness-aware reliable entropy minimisation", kind="model", params_model=SarParams,
    build=lambda ctx: Sar(ctx.source, params=ctx.params, window=ctx.window, device=ctx.device,
                          arch=str(ctx.source.config.get("arch", ""))),
    reference="Niu et al., ICLR 2023"))
