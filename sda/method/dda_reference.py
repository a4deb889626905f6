"""The DDA projection written the way the reference code is structured, for parity tests and the
projection benchmark only: the pipeline uses :func:`sda.method.dda.project`.

It follows guided-diffusion's ``GaussianDiffusion`` / ``SpacedDiffusion`` equations (Nichol &
Dhariwal 2021): every schedule coefficient is computed in float64 NumPy and cast to float32 when it
is gathered for a step; ``p_sample`` draws ``randn_like(x)`` at every step, including the last one
where it is masked out; the low-pass of the reference image is recomputed at every step; noise
comes from torch's global generator (seed it with ``torch.manual_seed``). It is a re-derivation
from the published equations and the DDA paper, not a copy of either code base.
"""

from __future__ import annotations

import numpy as np
import torch
from resize_right import resize

from sda.method.sampling import respaced_timesteps

__all__ = ["ReferenceDiffusion", "reference_project"]


class ReferenceDiffusion:
    """A linear-beta schedule of ``T`` steps respaced to ``respacing`` kept steps, learned-range
    variance (or fixed-small for 3-channel models): the coefficients guided-diffusion derives, as float64 arrays indexed by the respaced
    step ``i`` (0 = least noisy)."""

    def __init__(self, T: int = 1000, respacing: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02):
        scale = 1000 / T
        betas = np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)
        ac_full = np.cumprod(1.0 - betas)
        self.timestep_map = np.array(respaced_timesteps(T, respacing))
        ac = ac_full[self.timestep_map]
        # SpacedDiffusion: new betas from consecutive kept alphas_cumprod
        self.betas = 1.0 - ac / np.append(1.0, ac[:-1])
        self.alphas_cumprod = ac
        ac_prev = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        var = self.betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_log_variance_clipped = np.log(np.append(var[1], var[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - self.betas) / (1.0 - ac)

    @staticmethod
    def _gather(arr: np.ndarray, i: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        out = torch.from_numpy(arr).to(i.device)[i].float()
        return out.view(-1, *([1] * (len(shape) - 1))).expand(shape)

    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (self._gather(self.sqrt_alphas_cumprod, i, x0.shape) * x0
                + self._gather(self.sqrt_one_minus_alphas_cumprod, i, x0.shape) * noise)

    def p_sample(self, model, x: torch.Tensor, i: torch.Tensor) -> dict[str, torch.Tensor]:
        """One ancestral step from respaced index ``i``; the model sees the original timestep."""
        t = torch.from_numpy(self.timestep_map).to(x.device)[i]
        out = model(x, t)
        eps = out[:, :3]
        min_log = self._gather(self.posterior_log_variance_clipped, i, x.shape)
        if out.shape[1] == 6:  # learned range
            max_log = self._gather(np.log(self.betas), i, x.shape)
            frac = (out[:, 3:] + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:  # fixed small
            log_variance = min_log
        pred_x0 = (self._gather(self.sqrt_recip_alphas_cumprod, i, x.shape) * x
                   - self._gather(self.sqrt_recipm1_alphas_cumprod, i, x.shape) * eps).clamp(-1, 1)
        mean = (self._gather(self.posterior_mean_coef1, i, x.shape) * pred_x0
                + self._gather(self.posterior_mean_coef2, i, x.shape) * x)
        noise = torch.randn_like(x)
        nonzero = (i != 0).float().view(-1, *([1] * (x.ndim - 1)))
        return {"sample": mean + nonzero * torch.exp(0.5 * log_variance) * noise, "pred_xstart": pred_x0}


def reference_project(model, images: torch.Tensor, *, respacing: int = 100, N: int = 50, D: int = 4,
                      scale: float = 6.0, T: int = 1000) -> torch.Tensor:
    """The reference DDA loop: noise at respaced index N, denoise N-1 .. 0 with the batch-wide
    low-pass guidance. ``model(x, t) -> (B, 6, H, W)`` (epsilon and variance values) or
    ``(B, 3, H, W)`` (epsilon, fixed-small variance); ``images``
    float (B, 3, H, W) in [-1, 1]. Draws from torch's global generator."""
    diffusion = ReferenceDiffusion(T, respacing)
    b, _, h, w = images.shape
    shape_d, shape_u = (b, 3, int(h / D), int(w / D)), (b, 3, h, w)

    def lpf(x: torch.Tensor) -> torch.Tensor:
        return resize(resize(x, scale_factors=1.0 / D, out_shape=shape_d), scale_factors=D, out_shape=shape_u)

    img = diffusion.q_sample(images, torch.full((b,), N, device=images.device),
                             torch.randn(*images.shape, device=images.device))
    for i in range(N - 1, -1, -1):
        img = img.requires_grad_()
        out = diffusion.p_sample(model, img, torch.full((b,), i, device=images.device))
        norm = torch.linalg.norm(lpf(images) - lpf(out["pred_xstart"]))
        grad = torch.autograd.grad(norm, img)[0]
        img = (out["sample"] - scale * grad).detach()
    return img
