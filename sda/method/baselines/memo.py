"""MEMO (Zhang, Levine, Finn, "MEMO: Test Time Robustness via Adaptation and Augmentation", NeurIPS
2022): per test image, ``views`` AugMix augmentations of it, one SGD step on *all* parameters minimising
the entropy of the marginal (the mean of the views' softmax outputs), the prediction of the updated model
on the image itself, then the model is reset. So an image's label depends on that image alone, never on
the stream.

Paper settings for ImageNet ResNet-50: SGD lr 0.00025, one step, 64 views (16 to 64 in its ablation).
Deviation, stated: the paper's ResNet-50 runs mix the views' BatchNorm statistics with the source
statistics (prior strength 16); here BatchNorm keeps the source statistics (plain MEMO). The views are
drawn from ``derive_seed(seed, "memo", key)``: the same image gets the same views in every stream.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torchvision.transforms.v2 as T
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ClassifierCost
from sda.method.registry import StreamMethod, register_method
from sda.models.classifiers import Classifier, to_model_input
from sda.runtime import derive_seed

__all__ = ["Memo", "MemoParams"]


class MemoParams(Section):
    lr: float = Field(0.00025, gt=0, description="SGD learning rate of the one step per image (paper, ResNet-50).")
    views: int = Field(16, ge=2, description="AugMix views per image (paper: 16-64).")
    images_per_domain: int | None = Field(32, ge=1, description=(
        "MEMO on a seeded subset of each domain (its cost: views + 1 forwards and views backwards an image); "
        "null: every image. The table then says on how many."))


class Memo:
    """``memo(images uint8 (B, H, W, 3), keys) -> logits float32 (B, C)`` (CPU), image by image; called
    with a :class:`sda.method.registry.StreamInputs`, its originals and keys."""

    unet_forward_equivalents = 0.0

    def __init__(self, classifier: Classifier, *, lr: float, views: int, seed: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = copy.deepcopy(classifier.module).to(self.device).eval()
        self._initial = copy.deepcopy(self.model.state_dict())
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.preprocessing = classifier.preprocessing
        self.views, self.seed = views, seed
        self.augment = T.AugMix()
        self.cost = ClassifierCost()

    def reset(self) -> None:
        """Nothing carries over from one image to the next: the model is reset after each."""

    def one(self, image: np.ndarray, key: str) -> torch.Tensor:
        """uint8 (H, W, 3) -> logits (C,) of the model adapted to this image alone."""
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):  # AugMix draws from torch's global generator: seeded here, put back after
            torch.manual_seed(derive_seed(self.seed, "memo", key))
            views = torch.stack([self.augment(chw) for _ in range(self.views)]).permute(0, 2, 3, 1).numpy()
        # 1. marginal entropy over the augmented views (MEMO eq. 2)
        probs = self.model(to_model_input(views, **self.preprocessing, device=self.device)).softmax(1).mean(0)
        loss = -(probs * probs.clamp_min(1e-12).log()).sum()
        # 2. one step on every parameter, 3. predict the image itself, 4. reset
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            logits = self.model(to_model_input(image[None], **self.preprocessing, device=self.device))[0]
        self.model.load_state_dict(self._initial)
        self.optimizer.zero_grad(set_to_none=True)
        self.cost.forwards += self.views + 1
        self.cost.backwards += self.views
        return logits.float().cpu()

    def __call__(self, images, keys: list[str] | None = None) -> torch.Tensor:
        if keys is None:  # a StreamInputs batch
            images, keys = images.originals, images.keys
        return torch.stack([self.one(img, k) for img, k in zip(images, keys)])

    def extra(self):
        return {}


register_method(StreamMethod(
    name="memo", description="one marginal-entropy step per image on its AugMix views, then reset", kind="model",
    per_image=True, params_model=MemoParams, images_per_domain=lambda p: p.images_per_domain,
    build=lambda ctx: Memo(ctx.source, lr=ctx.params.lr, views=ctx.params.views, seed=ctx.seed, device=ctx.device),
    reference="Zhang et al., NeurIPS 2022"))
