"""Tent (Wang, Shelhamer, Liu, Olshausen, Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021): BatchNorm on the test batch's statistics, and one gradient step per batch on
the norm layers' affine parameters, minimising the mean softmax entropy of the batch's predictions.
The prediction is the forward pass the step is taken on (the paper's online setting). Below ``window``
images a batch is seen with the images before it (:class:`sda.method.norm_layers.Window`).

Paper settings for ImageNet (ResNet-50): SGD, lr 0.00025, momentum 0.9, batch 64, one step.
"""

from __future__ import annotations

import numpy as np
import torch

from sda.models.classifiers import Classifier, to_model_input
from sda.method.norm_layers import ClassifierCost, NormUpdater, Window, entropy, source_logits_if_lone

__all__ = ["Tent"]


class Tent:
    """``tent(images uint8 (B, H, W, 3)) -> logits float32 (B, C)`` (CPU), updating the model after the
    forward pass. :meth:`reset` restores the source weights and the optimiser's state."""

    def __init__(self, classifier: Classifier, *, lr: float, momentum: float, window: int,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.updater = NormUpdater(classifier.module, lr=lr, momentum=momentum, device=self.device)
        self.model, self.optimizer = self.updater.model, self.updater.optimizer
        self.preprocessing = classifier.preprocessing
        self.source = classifier  # a lone image: the source model's prediction, no step
        self.window = Window(window)
        self.cost = ClassifierCost()

    def reset(self) -> None:
        self.updater.restore()
        self.window.reset()

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x, rows = self.window(to_model_input(images, **self.preprocessing, device=self.device))
        if (alone := source_logits_if_lone(x, images, self.source, self.cost, self.device)) is not None:
            return alone
        # 1. forward on test-batch statistics; 2. entropy of the batch's predictions (Tent eq. 1)
        logits = self.model(x)
        loss = entropy(logits).mean()
        # 3. one step on the norm layers' affine parameters
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.cost.forwards += len(x)
        self.cost.backwards += len(x)
        return logits[rows].detach().float().cpu()
