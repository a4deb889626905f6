"""SAR (Niu, Wu, Zhang, Wen, Chen, Zhao, Tan, "Towards Stable Test-Time Adaptation in Dynamic Wild
World", ICLR 2023): Tent's entropy minimisation made safe for small batches, mixed shifts and
label-shifted streams by three changes, each as the authors' code does it:

1. reliable entropy: only images whose entropy is below ``margin`` (0.4 ln C) contribute;
2. sharpness-aware minimisation (SAM, Foret et al., ICLR 2021, radius ``rho`` 0.05): the gradient is
   taken at the worst point within ``rho`` of the weights, on the images still reliable there;
3. model recovery: an exponential moving average (0.9) of that second loss below ``reset_below`` (0.2)
   means the model has collapsed, and it is reset to the source weights.

Norm layers on test-batch statistics, their affine parameters updated with SGD (paper, ImageNet:
lr 0.00025, momentum 0.9, batch 64). Below ``window`` images a batch is seen with the images before it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sda.models.classifiers import Classifier, to_model_input
from sda.method.norm_layers import ClassifierCost, NormUpdater, Window, entropy, source_logits_if_lone

__all__ = ["Sar"]


class Sar:
    """``sar(images uint8 (B, H, W, 3)) -> logits float32 (B, C)`` (CPU), updating the model after the
    forward pass. ``resets`` counts the model recoveries. :meth:`reset` restores the source weights."""

    def __init__(self, classifier: Classifier, *, lr: float, momentum: float, window: int, rho: float = 0.05,
                 margin_fraction: float = 0.4, reset_below: float = 0.2, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.updater = NormUpdater(classifier.module, lr=lr, momentum=momentum, device=self.device)
        self.model, self.params, self.optimizer = self.updater.model, self.updater.params, self.updater.optimizer
        self.preprocessing = classifier.preprocessing
        self.source = classifier  # a lone image: the source model's prediction, no step
        self.window = Window(window)
        self.margin_fraction, self.rho, self.reset_below = margin_fraction, rho, reset_below
        self.ema: float | None = None
        self.resets = 0
        self.cost = ClassifierCost()

    def reset(self) -> None:
        self.updater.restore()
        self.window.reset()
        self.ema = None

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x, rows = self.window(to_model_input(images, **self.preprocessing, device=self.device))
        if (alone := source_logits_if_lone(x, images, self.source, self.cost, self.device)) is not None:
            return alone
        logits = self.model(x)
        margin = self.margin_fraction * math.log(logits.shape[1])
        self.cost.forwards += len(x)
        # 1. reliable entropy: the images below the margin
        ent = entropy(logits)
        reliable = ent < margin
        if reliable.any():
            self.optimizer.zero_grad(set_to_none=True)
            ent[reliable].mean().backward()
            self.cost.backwards += len(x)
            # 2. SAM: climb to the worst point within rho, take the gradient there, come back, step
            grads = [p.grad for p in self.params if p.grad is not None]
            scale = self.rho / (torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) + 1e-12)
            with torch.no_grad():
                climbs = [(p, p.grad * scale) for p in self.params if p.grad is not None]
                for p, e in climbs:
                    p.add_(e)
            self.optimizer.zero_grad(set_to_none=True)
            ent2 = entropy(self.model(x[reliable]))
            self.cost.forwards += int(reliable.sum())
            still = ent2 < margin
            if still.any():
                loss2 = ent2[still].mean()
                loss2.backward()
                self.cost.backwards += int(reliable.sum())
                value = float(loss2.detach())
                self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
            with torch.no_grad():
                for p, e in climbs:
                    p.sub_(e)
            if still.any():
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        # 3. model recovery
        if self.ema is not None and self.ema < self.reset_below:
            self.updater.restore()
            self.ema = None
            self.resets += 1
        return logits[rows].detach().float().cpu()
