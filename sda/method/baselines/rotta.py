"""RoTTA (Yuan, Xie, Li, "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023), as the
test-time-adaptation library runs it (mariodoebler/test-time-adaptation ``classification/methods/rotta.py``,
commit 8b2ed63; ``cfgs/imagenet_c/rotta.yaml``), made for correlated, continually shifting ("practical")
streams:

- robust BatchNorm: each BatchNorm layer normalises with statistics that start at the source's and move
  by ``alpha`` (0.05) towards each training batch's; the prediction uses them as they are;
- a category-balanced memory (CSTU) of ``memory_size`` (64) images, each stored under the teacher's
  pseudo-label; an image enters when its class has room or it scores better (younger, more certain) than
  the worst stored image of its class or of the majority classes;
- every ``update_every`` (64) images: the student (the robust norm layers' affine parameters) learns, on
  strongly augmented memory images, the teacher's predictions on the memory images, each weighted by its
  timeliness exp(-age) / (1 + exp(-age)); Adam lr 0.001; the teacher is the student's EMA (``nu`` 0.001);
- the prediction is the teacher's, taken before the batch enters the memory.

Below ``streams.window`` images: the window (:class:`~sda.method.baselines.base.Window`). Deviation: the library's CPU path
calls ``loss_calculation(x)`` on a method that takes no argument (it runs on CUDA's mixed-precision path
only); here the loss is the one its CUDA path computes.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from pydantic import Field

from sda.config import Section
from sda.method.baselines.augment import SeededAugment, tta_transform
from sda.method.baselines.base import ModelAdapter, ema_update
from sda.method.registry import StreamMethod, register_method
from sda.runtime import derive_seed

__all__ = ["CategoryBalancedMemory", "RobustBatchNorm", "Rotta", "RottaParams"]


class RottaParams(Section):
    lr: float = Field(0.001, gt=0, description="Adam learning rate (beta1 0.9).")
    memory_size: int = Field(64, ge=1, description="Images in the category-balanced memory.")
    update_every: int = Field(64, ge=1, description="Images between two updates.")
    nu: float = Field(0.001, gt=0, le=1, description="Teacher EMA rate: teacher <- (1 - nu) teacher + nu student.")
    alpha: float = Field(0.05, gt=0, le=1, description="Robust BatchNorm: rate towards each batch's statistics.")
    lambda_t: float = Field(1.0, ge=0, description="Memory score: weight of an image's age.")
    lambda_u: float = Field(1.0, ge=0, description="Memory score: weight of its uncertainty.")


class RobustBatchNorm(nn.Module):
    """A BatchNorm layer whose statistics start at the source's and, in training mode, move by ``alpha``
    towards each batch's (biased variance); eval mode normalises with them as they are."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, alpha: float):
        super().__init__()
        self.alpha, self.eps, self.dims = alpha, bn.eps, 2 if isinstance(bn, nn.BatchNorm1d) else 4
        self.register_buffer("source_mean", bn.running_mean.detach().clone())
        self.register_buffer("source_var", bn.running_var.detach().clone())
        self.weight = copy.deepcopy(bn.weight)
        self.bias = copy.deepcopy(bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) if self.dims == 2 else (1, -1, 1, 1)
        if self.training:
            var, mean = torch.var_mean(x, dim=[0] if self.dims == 2 else [0, 2, 3], unbiased=False)
            mean = (1 - self.alpha) * self.source_mean + self.alpha * mean
            var = (1 - self.alpha) * self.source_var + self.alpha * var
            self.source_mean, self.source_var = mean.detach().clone(), var.detach().clone()
        else:
            mean, var = self.source_mean, self.source_var
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


class CategoryBalancedMemory:
    """CSTU: at most ``capacity`` items over ``classes`` classes, ``capacity / classes`` a class before the
    majority classes give way; the item removed is the one of highest score (older, less certain). An
    item's age is the number of images added since it was (``clock`` minus its entry time: the library
    adds one to every item's age per image)."""

    def __init__(self, capacity: int, classes: int, lambda_t: float, lambda_u: float):
        self.capacity, self.classes, self.per_class = capacity, classes, capacity / classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.items: list[list[list]] = [[] for _ in range(classes)]  # [data, uncertainty, entry time]
        self.clock = 0

    def score(self, age: float, uncertainty: float) -> float:
        return self.lambda_t / (1 + math.exp(-age / self.capacity)) + self.lambda_u * uncertainty / math.log(self.classes)

    def add(self, data: torch.Tensor, label: int, uncertainty: float) -> None:
        if self._make_room(label, self.score(0, uncertainty)):
            self.items[label].append([data, uncertainty, self.clock])
        self.clock += 1

    def _make_room(self, label: int, score: float) -> bool:
        occupied = sum(len(c) for c in self.items)
        if len(self.items[label]) < self.per_class:
            if occupied < self.capacity:
                return True
            most = max(len(c) for c in self.items)
            return self._remove_from([c for c in range(self.classes) if len(self.items[c]) == most], score)
        return self._remove_from([label], score)

    def _remove_from(self, classes: list[int], score: float) -> bool:
        best = None
        for c in classes:
            for i, (_, u, t) in enumerate(self.items[c]):
                s = self.score(self.clock - t, u)
                if best is None or s >= best[0]:
                    best = (s, c, i)
        if best is None:
            return True
        if best[0] > score:
            self.items[best[1]].pop(best[2])
            return True
        return False

    def contents(self) -> tuple[list[torch.Tensor], list[float]]:
        """The stored images and their ages / capacity, class by class."""
        data = [item[0] for c in self.items for item in c]
        ages = [(self.clock - item[2]) / self.capacity for c in self.items for item in c]
        return data, ages


class Rotta(ModelAdapter):
    """RoTTA; ``updates`` counts the memory updates."""

    def __init__(self, classifier, *, params: RottaParams, window: int, seed: int, device="cpu"):
        self.p = params
        super().__init__(classifier, window=window, device=device)
        self.teacher = copy.deepcopy(self.model)
        for q in self.teacher.parameters():
            q.detach_()
        self.seed = seed
        self.augment: SeededAugment | None = None
        self.updates = 0  # over the whole stream
        self.reset_state()

    def configure_model(self, model: nn.Module) -> list[nn.Parameter]:
        model.requires_grad_(False)
        for name, m in list(model.named_modules()):
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                parent, _, attr = name.rpartition(".")
                robust = RobustBatchNorm(m, self.p.alpha)
                robust.requires_grad_(True)
                setattr(model.get_submodule(parent) if parent else model, attr, robust)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.requires_grad_(True)
        return [p for n, m in model.named_modules() for pn, p in m.named_parameters(recurse=False)
                if pn in ("weight", "bias") and p.requires_grad]

    def make_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.p.lr, betas=(0.9, 0.999), weight_decay=0.0)

    def models(self):
        return [self.model, self.teacher]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        self.cost.forwards += len(x)
        return self.teacher(x)

    def reset_state(self) -> None:
        self.seen = 0
        self.memory = CategoryBalancedMemory(self.p.memory_size, self.num_classes, self.p.lambda_t, self.p.lambda_u)

    def _update(self) -> None:
        self.model.train()
        self.teacher.train()
        data, ages = self.memory.contents()
        if not data:
            return
        sup = torch.stack(data)
        strong = self.normalise(self.augment(self.unit_range(sup)))
        with torch.enable_grad():
            teacher_out = self.teacher(sup)
            student_out = self.model(strong)
            weight = torch.exp(-torch.tensor(ages)) / (1 + torch.exp(-torch.tensor(ages)))
            loss = (-(teacher_out.softmax(1) * student_out.log_softmax(1)).sum(1) * weight.to(sup.device)).mean()
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        ema_update(self.teacher, self.model, 1 - self.p.nu, update_all=True)
        self.cost.forwards += 2 * len(sup)
        self.cost.backwards += len(sup)
        self.updates += 1

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is None:
            self.augment = SeededAugment(tta_transform(x.shape[-1]), derive_seed(self.seed, "rotta", "augment"))
        with torch.no_grad():
            self.model.eval()
            self.teacher.eval()
            out = self.teacher(x)
            predict = out.softmax(1)
            labels = predict.argmax(1)
            uncertainty = (-predict * torch.log(predict + 1e-6)).sum(1)
        self.cost.forwards += len(x)
        for i, data in enumerate(x):
            self.memory.add(data, int(labels[i]), float(uncertainty[i]))
            self.seen += 1
            if self.seen % self.p.update_every == 0:
                self._update()
        return out

    def extra(self):
        return {"updates": self.updates}


register_method(StreamMethod(
    name="rotta", description="robust BN, category-balanced memory, timeliness-weighted teacher", kind="model",
    params_model=RottaParams,
    build=lambda ctx: Rotta(ctx.source, params=ctx.params, window=ctx.window, seed=ctx.seed, device=ctx.device),
    reference="Yuan et al., CVPR 2023"))
