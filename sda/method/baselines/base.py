"""What every model-adaptation baseline repeats, once: :class:`ModelAdapter` owns the model copy, which
parameters train, the optimiser, the sliding window for tiny batches, the lone-image rule, the reset to
the source state and the count of classifier passes; a baseline writes ``configure_model``,
``make_optimizer`` and ``forward_and_adapt`` (the shape of the test-time-adaptation library's
``TTAMethod``, mariodoebler/test-time-adaptation ``classification/methods/base.py``).

Helpers shared by the update rules: norm layers on test-batch statistics, the norm layers' affine
parameters, the softmax entropy, the reference's optimisers, the parameter EMA.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn as nn

from sda.models.classifiers import Classifier, to_model_input

__all__ = ["ClassifierCost", "ModelAdapter", "Window", "ema_update", "entropy", "lone", "norm_affine_parameters",
           "reference_sgd", "symmetric_cross_entropy", "use_test_batch_statistics"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORMS = (*_BN, nn.LayerNorm, nn.GroupNorm)  # timm's LayerNorm2d is a LayerNorm


def lone(x: torch.Tensor) -> bool:
    """Whether a model input (B, ...) is a single image: no batch statistics (:class:`Window`)."""
    return len(x) < 2


@dataclass
class ClassifierCost:
    """Classifier passes made, counted per image row: ``forwards`` and ``backwards`` (a backward through
    the classifier, for an update or an input gradient)."""

    forwards: int = 0
    backwards: int = 0

    def per_image(self, images: int) -> dict[str, float]:
        n = max(images, 1)
        return {"classifier_forwards": round(self.forwards / n, 3), "classifier_backwards": round(self.backwards / n, 3)}

    def add(self, other: "ClassifierCost") -> None:
        self.forwards += other.forwards
        self.backwards += other.backwards


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy in nats per row of ``logits`` (N, C) -> (N,)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def symmetric_cross_entropy(x: torch.Tensor, x_ema: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per row of logits (N, C): (1 - alpha) CE(softmax x_ema, x) + alpha CE(softmax x, x_ema), the library's
    ``SymmetricCrossEntropy`` (CoTTA's ImageNet loss and ROID's consistency term, alpha 0.5)."""
    return -(1 - alpha) * (x_ema.softmax(1) * x.log_softmax(1)).sum(1) - alpha * (x.softmax(1) * x_ema.log_softmax(1)).sum(1)


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


def norm_affine_parameters(model: nn.Module, skip: Iterable[str] = ()) -> list[nn.Parameter]:
    """The affine weights and biases of the norm layers (BatchNorm, LayerNorm, GroupNorm), made the only
    trainable parameters (``requires_grad``); a layer whose name contains one of ``skip`` stays frozen."""
    model.requires_grad_(False)
    params = []
    for name, m in model.named_modules():
        if isinstance(m, _NORMS) and not any(s in name for s in skip):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
    if not params:
        raise ValueError("the classifier has no norm layer with affine parameters: nothing to adapt")
    return params


def reference_sgd(params: list[nn.Parameter], lr: float, momentum: float = 0.9, nesterov: bool = True) -> torch.optim.SGD:
    """The library's SGD (``OPTIM``: momentum 0.9, dampening 0, Nesterov, no weight decay)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=0.0, nesterov=nesterov and momentum > 0,
                           weight_decay=0.0)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float, update_all: bool = False) -> None:
    """``target <- momentum * target + (1 - momentum) * source``, parameter by parameter (those that train
    in ``target``, or all with ``update_all``): the library's ``ema_update_model``. Buffers untouched."""
    if momentum >= 1.0:
        return
    for t, s in zip(target.parameters(), source.parameters()):
        if t.requires_grad or update_all:
            t.data = momentum * t.data + (1 - momentum) * s.data.to(t.device)


class Window:
    """Batches smaller than ``size`` are seen together with the rows before them: the input is the last
    ``size`` rows of the stream since the last :meth:`reset` (a sliding window, as the
    test-time-adaptation library uses at batch size 1), and the current batch's rows are the last ones.
    ``size`` 0 or a batch at least ``size`` long: the batch alone.

    The adapters update once per turn of the window (each ``size`` rows: ``full_turn``) and in between
    predict with the adapted model on the window without learning, as the library does (its
    ``forward_sliding_window``). A model input of one image has no batch to take statistics from (a
    BatchNorm after global pooling cannot even normalise it): the adapters then give the source model's
    prediction and learn nothing (:func:`lone`)."""

    def __init__(self, size: int):
        self.size = size
        self.buffer: torch.Tensor | None = None
        self.seen = 0  # rows since the reset
        self.sliding = False  # the last call's input was the window
        self.full_turn = False  # ... and the window turned over completely since the last update

    def reset(self) -> None:
        self.buffer = None
        self.seen = 0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """``x`` (B, ...) -> (input (W, ...), the rows of ``x`` in it)."""
        if self.size <= 0 or len(x) >= self.size:
            self.sliding = self.full_turn = False
            return x, slice(0, len(x))
        self.buffer = x if self.buffer is None else torch.cat([self.buffer, x])[-self.size:]
        before, self.seen = self.seen, self.seen + len(x)
        self.sliding, self.full_turn = True, self.seen // self.size > before // self.size
        return self.buffer, slice(len(self.buffer) - len(x), len(self.buffer))


class ModelAdapter:
    """``adapter(batch: StreamInputs) -> logits float32 (B, C)`` on the CPU, the model adapted along the
    stream (sda.method.registry's adapter protocol).

    A subclass sets up in :meth:`configure_model` (returns the parameters that train; default: Tent's,
    BatchNorm on test-batch statistics and the norm layers' affine parameters), :meth:`make_optimizer`
    (None: nothing trains) and predicts-and-updates in :meth:`forward_and_adapt` on the normalised input.
    The base gives a batch below ``window`` images its window, a lone image the frozen source model's
    logits (no step), and :meth:`reset` puts back every model of :meth:`models` and the optimiser as they
    were before the first batch (then :meth:`reset_state` for the subclass's own state)."""

    unet_forward_equivalents = 0.0

    def __init__(self, classifier: Classifier, *, window: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.preprocessing = classifier.preprocessing
        self.num_classes = int(classifier.config.get("num_classes") or 0)
        self.model = copy.deepcopy(classifier.module).to(self.device)
        self.params = self.configure_model(self.model)
        self.optimizer = self.make_optimizer(self.params) if self.params else None
        self.window = Window(window)
        self.cost = ClassifierCost()
        self._initial: tuple[list[dict], dict | None] | None = None

    # -- what a baseline defines ---------------------------------------------------------------------------
    def configure_model(self, model: nn.Module) -> list[nn.Parameter]:
        use_test_batch_statistics(model)
        return norm_affine_parameters(model)

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        return None

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised model input (W, 3, h, w) -> logits (W, C), updating the state."""
        raise NotImplementedError

    def models(self) -> list[nn.Module]:
        """Every module whose state :meth:`reset` restores."""
        return [self.model]

    def reset_state(self) -> None:
        """The subclass's own state back to its start (moving averages, memories)."""

    def extra(self) -> dict[str, Any]:
        return {}

    # -- shared --------------------------------------------------------------------------------------------
    def _snapshot(self) -> None:
        if self._initial is None:
            self._initial = ([copy.deepcopy(m.state_dict()) for m in self.models()],
                             None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()))

    def restore_source(self) -> None:
        """Every model of :meth:`models` and the optimiser as before the first batch, and the subclass's
        state (a model recovery: the window stays)."""
        self._snapshot()
        states, opt = self._initial
        for m, s in zip(self.models(), states):
            m.load_state_dict(s)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(opt)
        self.reset_state()

    def reset(self) -> None:
        """A stream's reset: :meth:`restore_source` and an empty window."""
        self.restore_source()
        self.window.reset()

    def model_input(self, images) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> the classifier's normalised input (B, 3, h, w) on the device."""
        return to_model_input(images, **self.preprocessing, device=self.device)

    def unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised input back to [0, 1] pixels (where the reference's augmentations act)."""
        m = torch.tensor(self.preprocessing["mean"], device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.preprocessing["std"], device=x.device).view(1, -1, 1, 1)
        return x * s + m

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, 3, h, w) -> the classifier's normalised input."""
        m = torch.tensor(self.preprocessing["mean"], device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.preprocessing["std"], device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction on a window between two updates (the library's ``forward_sliding_window``):
        the adapted model's logits, nothing learnt."""
        self.cost.forwards += len(x)
        return self.model(x)

    def __call__(self, batch) -> torch.Tensor:
        self._snapshot()
        x, rows = self.window(self.model_input(batch.originals))
        if lone(x):  # no batch statistics: the frozen source model's prediction, learnt from nothing
            self.cost.forwards += 1
            return batch.frozen["source_orig"].float().cpu()
        if self.window.sliding and not self.window.full_turn:  # between two updates of a sliding window
            return self.predict(x)[rows].detach().float().cpu()
        logits = self.forward_and_adapt(x)
        return logits[rows].detach().float().cpu()
