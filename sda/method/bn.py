"""BN: the source model with its BatchNorm layers on the test batch's statistics (Schneider et al.,
NeurIPS 2020; Nado et al., 2020: "prediction-time batch normalisation"). Nothing is learnt, so the
only state is the batch itself; below ``window`` images a batch is seen with the images before it
(:class:`sda.method.norm_layers.Window`). A LayerNorm model (Swin, ConvNeXt) has no batch statistics:
``bn`` is then the source model, and says so (``batch_norm_layers`` 0).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from sda.models.classifiers import Classifier, to_model_input
from sda.method.norm_layers import ClassifierCost, Window, source_logits_if_lone, use_test_batch_statistics

__all__ = ["BatchNormAdapter"]


class BatchNormAdapter:
    """``adapter(images uint8 (B, H, W, 3)) -> logits float32 (B, C)`` on the CPU, with the statistics
    of the batch (or of the window holding it). :meth:`reset` empties the window."""

    def __init__(self, classifier: Classifier, *, window: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = copy.deepcopy(classifier.module).to(self.device)
        self.batch_norm_layers = use_test_batch_statistics(self.model)
        self.preprocessing = classifier.preprocessing
        self.source = classifier  # a lone image: the source model's prediction
        self.window = Window(window)
        self.cost = ClassifierCost()

    def reset(self) -> None:
        self.window.reset()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x, rows = self.window(to_model_input(images, **self.preprocessing, device=self.device))
        if (alone := source_logits_if_lone(x, images, self.source, self.cost, self.device)) is not None:
            return alone
        self.cost.forwards += len(x)
        return self.model(x)[rows].float().cpu()
