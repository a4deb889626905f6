"""The test-time augmentations of CoTTA, RoTTA and ROID: the test-time-adaptation library's
``get_tta_transforms`` (mariodoebler/test-time-adaptation ``classification/augmentations/transforms_cotta.py``,
after KATANA, arXiv 2109.08191), on batches of [0, 1] pixels, one draw of the random parameters per call
(per batch, as the library applies them). Built on torchvision's transforms, which draw from torch's
global generator: :class:`SeededAugment` runs them on a generator state of its own, so a method's
augmentations depend on its seed only.
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F

__all__ = ["SeededAugment", "tta_transform"]


class _Clip(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


class _GaussianNoise(torch.nn.Module):
    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (torch.randn(x.size()) * self.std).to(x.device)


class _ColorJitterPro(T.ColorJitter):
    """Brightness, contrast, saturation, hue and gamma, each drawn uniformly, in a random order."""

    def __init__(self, brightness, contrast, saturation, hue, gamma):
        super().__init__(brightness, contrast, saturation, hue)
        self.gamma = self._check_input(gamma, "gamma")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        for fn_id in torch.randperm(5):
            if fn_id == 0 and self.brightness is not None:
                img = F.adjust_brightness(img, torch.tensor(1.0).uniform_(*self.brightness).item())
            if fn_id == 1 and self.contrast is not None:
                img = F.adjust_contrast(img, torch.tensor(1.0).uniform_(*self.contrast).item())
            if fn_id == 2 and self.saturation is not None:
                img = F.adjust_saturation(img, torch.tensor(1.0).uniform_(*self.saturation).item())
            if fn_id == 3 and self.hue is not None:
                img = F.adjust_hue(img, torch.tensor(1.0).uniform_(*self.hue).item())
            if fn_id == 4 and self.gamma is not None:
                gamma = torch.tensor(1.0).uniform_(*self.gamma).item()
                img = F.adjust_gamma(img.clamp(1e-8, 1.0), gamma)  # the library's guard against NaN gradients
        return img


def tta_transform(n_pixels: int, *, gaussian_std: float = 0.005, soft: bool = False, padding_mode: str = "edge",
                  cotta_augs: bool = True) -> T.Compose:
    """The library's ``get_tta_transforms(img_size, gaussian_std, soft, padding_mode, cotta_augs)``:
    [0, 1] (B, 3, n, n) -> [0, 1] (B, 3, n, n)."""
    steps = [
        _Clip(),
        _ColorJitterPro(brightness=[0.8, 1.2] if soft else [0.6, 1.4], contrast=[0.85, 1.15] if soft else [0.7, 1.3],
                        saturation=[0.75, 1.25] if soft else [0.5, 1.5], hue=[-0.03, 0.03] if soft else [-0.06, 0.06],
                        gamma=[0.85, 1.15] if soft else [0.7, 1.3]),
        T.Pad(padding=int(n_pixels / 2), padding_mode=padding_mode),
        T.RandomAffine(degrees=[-8, 8] if soft else [-15, 15], translate=(1 / 16, 1 / 16),
                       scale=(0.95, 1.05) if soft else (0.9, 1.1), shear=None,
                       interpolation=T.InterpolationMode.BILINEAR, fill=0),
    ]
    if cotta_augs:
        steps += [T.GaussianBlur(kernel_size=5, sigma=[0.001, 0.25] if soft else [0.001, 0.5]),
                  T.CenterCrop(size=n_pixels), T.RandomHorizontalFlip(p=0.5), _GaussianNoise(gaussian_std), _Clip()]
    else:
        steps += [T.CenterCrop(size=n_pixels), T.RandomHorizontalFlip(p=0.5), _Clip()]
    return T.Compose(steps)


class SeededAugment:
    """``augment(x [0, 1] (B, 3, n, n)) -> augmented`` with torch's global generator swapped for a state
    of its own (seeded by ``seed``, advanced by each call), so what else runs in the process draws
    nothing from it and it draws nothing from the rest."""

    def __init__(self, transform: T.Compose, seed: int):
        self.transform = transform
        self.seed = seed
        self.state = self._seeded(seed)

    @staticmethod
    def _seeded(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return g.get_state()

    def reset(self) -> None:
        self.state = self._seeded(self.seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.state)
            out = self.transform(x)
            self.state = torch.get_rng_state()
        return out
