"""LAME (Boudiaf, Mueller, Ben Ayed, Bertinetto, "Parameter-free Online Test-time Adaptation", CVPR
2022), as the test-time-adaptation library runs it (mariodoebler/test-time-adaptation
``classification/methods/lame.py``, commit 8b2ed63; ``conf.py`` ``LAME``): the model is not touched; the
outputs of a batch are the assignments Y that minimise a Laplacian-regularised objective, the frozen
model's log-likelihoods as unary terms and a feature-affinity graph over the batch as pairwise terms,
found by the bound-optimisation fixed point Y <- softmax(log p + W Y) (up to 100 steps, until the energy
moves by under 1e-8 of itself).

Features: the frozen source model's penultimate features on the originals (shared with every method,
``StreamInputs.frozen``), L2-normalised. Affinity (``affinity``): the library's default ``rbf`` (a
Gaussian kernel whose width is the mean distance to the ``knn``-th (5th) neighbour), ``knn`` (1 for each
of the ``knn`` nearest neighbours) or ``linear`` (the dot product).

The output is log Y (argmax: LAME's label). Deviation: below ``streams.window`` images a batch is solved
with the images before it, every batch (the library solves each full window and gives the source model's
logits in between: LAME has nothing to save by waiting).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ClassifierCost, Window
from sda.method.registry import StreamMethod, register_method

__all__ = ["Lame", "LameParams", "affinity", "laplacian_optimization"]

Affinity = Literal["rbf", "knn", "linear"]


class LameParams(Section):
    affinity: Affinity = Field("rbf", description="rbf (the library's default) | knn | linear.")
    knn: int = Field(5, ge=1, description="Neighbours: the rbf kernel's width (mean distance to the k-th) or the kNN graph.")
    force_symmetry: bool = Field(False, description="Use (W + W^T) / 2.")


def affinity(features: torch.Tensor, kind: Affinity, knn: int) -> torch.Tensor:
    """(N, D) L2-normalised features -> affinity (N, N), the library's ``<kind>_affinity``."""
    n = len(features)
    if kind == "linear":
        return features @ features.t()
    dist = torch.norm(features.unsqueeze(0) - features.unsqueeze(1), dim=-1, p=2)
    if kind == "knn":
        index = dist.topk(min(knn + 1, n), -1, largest=False).indices[:, 1:]
        return torch.zeros(n, n, device=features.device).scatter_(-1, index, 1.0)
    sigma = dist.topk(k=min(knn, n), dim=-1, largest=False).values[:, -1].mean()
    return torch.exp(-dist ** 2 / (2 * sigma ** 2))


def laplacian_optimization(unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float = 1.0,
                           max_steps: int = 100) -> torch.Tensor:
    """Assignments Y (N, K) of unary terms -log p (N, K) and affinity ``kernel`` (N, N)."""
    old = float("inf")
    Y = (-unary).softmax(-1)
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(Y)
        Y = (-unary + pairwise).softmax(-1)
        E = float((unary * Y - bound_lambda * pairwise * Y + Y * torch.log(Y.clip(1e-20))).sum())
        if i > 1 and abs(E - old) <= 1e-8 * abs(old):
            break
        old = E
    return Y


def lame_outputs(logits: torch.Tensor, features: torch.Tensor, params: LameParams) -> torch.Tensor:
    """LAME on a batch: logits (N, C), features (N, D) -> log Y (N, C)."""
    unary = -torch.log(logits.float().softmax(1) + 1e-10)
    kernel = affinity(F.normalize(features.float(), p=2, dim=-1), params.affinity, params.knn)
    if params.force_symmetry:
        kernel = 0.5 * (kernel + kernel.t())
    return torch.log(laplacian_optimization(unary, kernel).clamp_min(1e-30))


class Lame:
    """``lame(batch) -> log Y (B, C)``: LAME over the frozen ``logits_key`` logits and ``features_key``
    features of the batch (or of the window holding it)."""

    unet_forward_equivalents = 0.0

    def __init__(self, params: LameParams, *, window: int, logits_key: str = "source_orig",
                 features_key: str = "source_orig_features"):
        self.p, self.keys = params, (logits_key, features_key)
        self.window = Window(window)
        self.cost = ClassifierCost()

    def reset(self) -> None:
        self.window.reset()

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        logits, features = (batch.frozen[k] for k in self.keys)
        both, rows = self.window(torch.cat([logits, features], 1))
        self.cost.forwards += len(batch)  # the frozen forward it reads
        return lame_outputs(both[:, : logits.shape[1]], both[:, logits.shape[1]:], self.p)[rows]

    def extra(self):
        return {}


register_method(StreamMethod(
    name="lame", description="Laplacian-regularised outputs over a feature graph (no update)", kind="output",
    params_model=LameParams, build=lambda ctx: Lame(ctx.params, window=ctx.window),
    reference="Boudiaf et al., CVPR 2022"))
