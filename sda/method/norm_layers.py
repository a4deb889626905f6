"""What the model-adaptation baselines share: norm layers on test-batch statistics, the norm layers'
affine parameters, a sliding window of inputs for tiny batches, the softmax entropy, and a count of
the classifier passes they make.

Mechanisms only; each method's update rule lives in its own module (``bn``, ``tent``, ``sar``, ``memo``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ClassifierCost", "NormUpdater", "Window", "entropy", "lone", "norm_affine_parameters",
           "source_logits_if_lone", "use_test_batch_statistics"]


def lone(x: torch.Tensor) -> bool:
    """Whether a model input (B, ...) is a single image: no batch statistics (:class:`Window`)."""
    return len(x) < 2


def source_logits_if_lone(x: torch.Tensor, images, classifier, cost: "ClassifierCost",
                          device: torch.device) -> torch.Tensor | None:
    """The source ``classifier``'s logits of ``images`` (one forward, counted in ``cost``) when the model
    input ``x`` is a single image (:func:`lone`); None otherwise, the adapter then uses its batch."""
    if not lone(x):
        return None
    cost.forwards += 1
    return classifier.logits(images, device=device)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORMS = (*_BN, nn.LayerNorm, nn.GroupNorm)  # timm's LayerNorm2d is a LayerNorm


@dataclass
class ClassifierCost:
    """Classifier passes made, counted per image row: ``forwards`` and ``backwards`` (a backward through
    the classifier, for an update or an input gradient)."""

    forwards: int = 0
    backwards: int = 0

    def per_image(self, images: int) -> dict[str, float]:
        n = max(images, 1)
        return {"classifier_forwards": round(self.forwards / n, 3), "classifier_backwards": round(self.backwards / n, 3)}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy in nats per row of ``logits`` (N, C) -> (N,)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def use_test_batch_statistics(model: nn.Module) -> int:
    """Eval mode, except that every BatchNorm layer normalises with the statistics of the batch it is
    given (its running statistics dropped, as Tent does); returns the number of BatchNorm layers (0 for
    a LayerNorm model such as Swin or ConvNeXt, which has no batch statistics to adapt)."""
    model.eval()
    n = 0
    for m in model.modules():
        if isinstance(m, _BN):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            n += 1
    return n


def norm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine weights and biases of the norm layers (BatchNorm, LayerNorm, GroupNorm): what Tent and
    SAR update; every other parameter is frozen (``requires_grad`` False)."""
    model.requires_grad_(False)
    params = []
    for m in model.modules():
        if isinstance(m, _NORMS):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
    if not params:
        raise ValueError("the classifier has no norm layer with affine parameters: tent / sar have nothing to adapt")
    return params


class NormUpdater:
    """A copy of a classifier's ``module`` on ``device`` for Tent-like methods: norm layers on test-batch
    statistics, their affine parameters (``params``) updated by SGD (``optimizer``); :meth:`restore` puts
    back the source weights and the optimiser's empty state."""

    def __init__(self, module: nn.Module, *, lr: float, momentum: float, device: torch.device):
        self.model = copy.deepcopy(module).to(device)
        use_test_batch_statistics(self.model)
        self.params = norm_affine_parameters(self.model)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        self._initial = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))

    def restore(self) -> None:
        self.model.load_state_dict(self._initial[0])
        self.optimizer.load_state_dict(self._initial[1])


class Window:
    """Batches smaller than ``size`` are seen together with the images before them: the model's
    input is the last ``size`` images of the stream since the last :meth:`reset` (the sliding window
    the test-time-adaptation library uses at batch size 1), and the current batch's rows are the
    last ones. ``size`` 0 or a batch at least ``size`` long: the batch alone.

    A model input of one image has no batch to take statistics from (a BatchNorm after global pooling
    cannot even normalise it): the adapters then give the source model's prediction and learn nothing
    (:func:`lone`)."""

    def __init__(self, size: int):
        self.size = size
        self.buffer: torch.Tensor | None = None

    def reset(self) -> None:
        self.buffer = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """``x`` (B, ...) -> (model input (W, ...), the rows of ``x`` in it)."""
        if self.size <= 0 or len(x) >= self.size:
            return x, slice(0, len(x))
        self.buffer = x if self.buffer is None else torch.cat([self.buffer, x])[-self.size:]
        return self.buffer, slice(len(self.buffer) - len(x), len(self.buffer))
