"""Sampling from the class-conditional diffusion models: respaced ancestral (DDPM) sampling with
one generator per sample (the embedded UNet, and DiT's latents), classifier-free guidance.

DiT follows DiT's own ``sample.py`` rather than diffusers' ``DiTPipeline``: 250 respaced DDPM steps
of the linear 1000-step schedule WITH the learned variance (``DiTPipeline`` drops it), no clipping
of the latent x0, classifier-free guidance only when the scale is above 1, and one generator per
sample so each image depends on its (class, seed) plan row alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from sda.models.schedulers import ddpm_scheduler

__all__ = ["respaced_timesteps", "sample_class_conditional", "sample_dit"]


def respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(T, str(steps))`` for one section, ascending:
    ``round(i * (T - 1) / (steps - 1))``; for T=1000, steps=100: 0, 10, ..., 50, 61, ..., 999."""
    if steps < 2 or steps > num_train_timesteps:
        raise ValueError(f"steps must be in [2, {num_train_timesteps}], got {steps}")
    frac = (num_train_timesteps - 1) / (steps - 1)
    return [int(round(i * frac)) for i in range(steps)]


@torch.no_grad()
def sample_class_conditional(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    class_labels: Sequence[int],
    seeds: Sequence[int],
    *,
    null_label: int,
    steps: int,
    guidance_scale: float = 1.0,
    clamp: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Respaced ancestral (DDPM) sampling; returns float (B, C, S, S) with C, S the model's
    ``in_channels`` and ``sample_size``, clamped to [-1, 1] when ``clamp`` (pixels, not latents).

    ``unet(x, t, class_labels=...)`` returns ``.sample`` with C channels (epsilon) or 2C (epsilon and
    learned-range variance: a UNet2DModel or a DiTTransformer2DModel). Sample ``b`` depends only on
    ``(class_labels[b], seeds[b])``: its initial noise and every step's noise come from its own
    ``torch.Generator``. Classifier-free guidance (Ho & Salimans 2022) on the epsilon channels:
    eps = eps_null + w * (eps_cond - eps_null); w = 1 is the plain conditional model.
    """
    if len(class_labels) != len(seeds):
        raise ValueError("class_labels and seeds must have the same length")
    sched = DDPMScheduler.from_config(scheduler.config)  # never mutate the caller's scheduler
    sched.set_timesteps(timesteps=respaced_timesteps(sched.config.num_train_timesteps, steps)[::-1])
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    size, ch = unet.config.sample_size, unet.config.in_channels
    b = len(seeds)
    # 1. initial noise x_T ~ N(0, I), one generator per sample
    x = randn_tensor((b, ch, size, size), generator=gens).to(device)
    y = torch.as_tensor(list(class_labels), dtype=torch.long, device=device)
    y_null = torch.full_like(y, null_label)
    for t in tqdm(sched.timesteps, desc="sample", leave=False, disable=not progress):
        tt = torch.full((b,), int(t), device=device, dtype=torch.long)
        # 2. predict the noise, with classifier-free guidance when w != 1
        if guidance_scale == 1.0:
            eps = unet(x, tt, class_labels=y).sample
        else:
            out_c, out_u = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([y, y_null])).sample.chunk(2)
            eps = out_c.clone()  # learned variance channels (if any) from the conditional branch
            eps[:, :ch] = out_u[:, :ch] + guidance_scale * (out_c[:, :ch] - out_u[:, :ch])
        # 3. x_{t-1} ~ p(x_{t-1} | x_t), DDPM eq. 6-7 on the respaced schedule
        x = sched.step(eps.float().cpu(), t, x.cpu(), generator=gens).prev_sample.to(device)
    return x.clamp(-1, 1) if clamp else x


@torch.no_grad()
def sample_dit(
    transformer: DiTTransformer2DModel,
    vae: AutoencoderKL,
    class_labels: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int = 250,
    guidance_scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Images float (B, 3, 8 * sample_size, 8 * sample_size) in [-1, 1] for (class, seed) pairs.
    ``guidance_scale``: classifier-free guidance above 1 only; at or below 1 the conditional model alone,
    as DiT's ``sample.py`` (``using_cfg = cfg_scale > 1``)."""
    null_label = transformer.config.num_embeds_ada_norm  # DiT's "null" class for CFG (1000)
    guidance_scale = guidance_scale if guidance_scale > 1 else 1.0
    latents = sample_class_conditional(transformer, ddpm_scheduler(learn_sigma=True, clip_sample=False), class_labels, seeds, null_label=null_label,
                                       steps=steps, guidance_scale=guidance_scale, clamp=False, device=device)
    images = vae.decode(latents.to(device) / vae.config.scaling_factor).sample
    return images.float().clamp(-1, 1)
