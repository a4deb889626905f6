"""The one diffusion schedule of the project, as a diffusers ``DDPMScheduler``.

Every model here (the embedded UNet, ADM, DiT) uses guided-diffusion's linear-beta 1000-step
schedule with epsilon prediction; they differ only in the variance (fixed-small, or learned-range
for a model with a learned variance head) and in whether the predicted x0 is clamped to [-1, 1]
(pixels: yes, as guided-diffusion's ``clip_denoised``; DiT's latents: no). With
``set_timesteps(100)`` the timesteps are ``space_timesteps(1000, "100")`` (0, 10, ..., 50, 61, ..., 999).
"""

from __future__ import annotations

from diffusers import DDPMScheduler

__all__ = ["ddpm_scheduler"]


def ddpm_scheduler(*, learn_sigma: bool = False, clip_sample: bool = True,
                   num_train_timesteps: int = 1000) -> DDPMScheduler:
    """Linear betas 1e-4..0.02 over ``num_train_timesteps``, epsilon prediction; variance
    ``learned_range`` when ``learn_sigma`` (ADM, DiT) else ``fixed_small``; ``clip_sample`` clamps
    the predicted x0 to [-1, 1] (pixel-space models)."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, variance_type="learned_range" if learn_sigma else "fixed_small",
                         clip_sample=clip_sample, clip_sample_range=1.0, prediction_type="epsilon",
                         timestep_spacing="linspace")
