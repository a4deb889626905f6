"""BN: the source model with its BatchNorm layers on the test batch's statistics (Schneider et al.,
NeurIPS 2020; Nado et al., 2020: "prediction-time batch normalisation"; the test-time-adaptation
library's ``norm_test``, mariodoebler/test-time-adaptation ``classification/methods/norm.py``).

Nothing is learnt, so the only state is the window: below ``streams.window`` images a batch is seen
with the images before it. A LayerNorm model (Swin, ConvNeXt) has no batch statistics: ``bn`` is then
the source model, and says so (``batch_norm_layers`` 0).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sda.method.baselines.base import ModelAdapter, use_test_batch_statistics
from sda.method.registry import StreamMethod, register_method

__all__ = ["BatchNormAdapter"]


class BatchNormAdapter(ModelAdapter):
    """Logits with the statistics of the batch (or of the window holding it); nothing trains."""

    def configure_model(self, model: nn.Module) -> list[nn.Parameter]:
        self.batch_norm_layers = use_test_batch_statistics(model)
        model.requires_grad_(False)
        return []

    @torch.no_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        self.cost.forwards += len(x)
        return self.model(x)

    def extra(self):
        return {} if self.batch_norm_layers else {"batch_norm_layers": 0}


register_method(StreamMethod(
    name="bn", description="BatchNorm on the test batch's statistics", kind="model",
    build=lambda ctx: BatchNormAdapter(ctx.source, window=ctx.window, device=ctx.device),
    reference="Schneider et al. 2020; test-time-adaptation library norm_test"))
