"""DiffPure (Nie, Guo, Huang, Xiao, Vahdat, Anandkumar, "Diffusion Models for Adversarial
Purification", ICML 2022), the SDA paper's baseline row: diffuse each image to t* and denoise it with
the unconditional model, *without* guidance, then classify with the source model. On ImageNet the paper
diffuses to t* = 0.15 (of the 1000-step schedule).

Here the respaced schedule of the projection (``projection.respacing``) is used, and the depth is the
respaced index whose timestep is nearest t* * T, noised and denoised with the projection's convention
(noise at ``ts[N]``, denoise ``ts[N-1] .. ts[0]``: N UNet forwards, no backward). Each image draws its
noise from its own generator (``derive_seed(seed, "diffpure", key)``), so its purification depends on
that image alone, never on its batch mates or its place in a stream.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from sda.method.dda import _alphas_cumprod_fp64
from sda.method.sampling import respaced_timesteps
from sda.runtime import derive_seed

__all__ = ["diffpure_depth", "purify"]


def diffpure_depth(t_star: float, num_train_timesteps: int, respacing: int) -> int:
    """The respaced index N (1 <= N < respacing) whose timestep is nearest ``t_star`` * T."""
    if not 0 < t_star < 1:
        raise ValueError(f"streams.diffpure_t must be in (0, 1), got {t_star}")
    ts = respaced_timesteps(num_train_timesteps, respacing)
    return min(range(1, respacing), key=lambda i: abs(ts[i] - t_star * num_train_timesteps))


@torch.no_grad()
def purify(unet: torch.nn.Module, scheduler: DDPMScheduler, images: torch.Tensor, keys: Sequence[str], *,
           N: int, respacing: int, seed: int, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` float (B, 3, H, W) in [-1, 1] -> their purifications, same shape and range; ``keys``
    (B,) name each image's noise. ``unet(x, t, class_labels=...).sample``: as :func:`sda.method.dda.project`."""
    ts = respaced_timesteps(scheduler.config.num_train_timesteps, respacing)
    sched = DDPMScheduler.from_config(scheduler.config)
    sched.set_timesteps(timesteps=ts[::-1])
    sched.alphas_cumprod = _alphas_cumprod_fp64(sched)
    dev = images.device
    gens = [torch.Generator(device=dev).manual_seed(derive_seed(seed, "diffpure", k)) for k in keys]
    kwargs: dict[str, Any] = {} if class_labels is None else {"class_labels": class_labels.to(dev)}
    b = images.shape[0]
    # 1. forward noising to ts[N], one draw per image from its own generator
    noise = randn_tensor(images.shape, generator=gens, device=dev, dtype=images.dtype)
    x = sched.add_noise(images.float(), noise, torch.full((b,), ts[N], device=dev, dtype=torch.long))
    # 2. ancestral sampling ts[N-1] .. ts[0], no guidance
    for i in range(N - 1, -1, -1):
        out = unet(x, torch.full((b,), ts[i], device=dev, dtype=torch.long), **kwargs).sample
        x = sched.step(out.float(), ts[i], x, generator=gens).prev_sample
    return x.clamp(-1, 1)
