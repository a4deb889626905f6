"""DiT-XL/2 (Peebles & Xie 2023) as the ImageNet profile's class-conditional generator.

A diffusers DiT folder (``transformer/`` = ``DiTTransformer2DModel``, ``vae/`` = ``AutoencoderKL``,
as ``facebook/DiT-XL-2-256`` ships) is read from a local path. Sampling follows DiT's own
``sample.py`` rather than diffusers' ``DiTPipeline``: 250 respaced DDPM steps of the linear
1000-step schedule WITH the learned variance (``DiTPipeline`` drops it), no clipping of the latent
x0, classifier-free guidance only when the scale is above 1, and one generator per sample so each
image depends on its (class, seed) plan row alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

from sda.adm import adm_scheduler
from sda.diffusion import sample_class_conditional

__all__ = ["WHERE_TO_GET_DIT", "dit_scheduler", "load_dit", "sample_dit", "save_dit"]

WHERE_TO_GET_DIT = ("a diffusers DiT folder with transformer/ and vae/ (e.g. a local copy of the "
                    "facebook/DiT-XL-2-256 repository from the Hugging Face hub); set imagenet.dit to it")


def dit_scheduler() -> DDPMScheduler:
    """DiT's diffusion: linear betas, 1000 steps, learned-range variance, latent x0 not clipped."""
    return DDPMScheduler.from_config(adm_scheduler(learn_sigma=True).config, clip_sample=False)


def load_dit(folder: str | Path, device: torch.device | str = "cpu") -> tuple[DiTTransformer2DModel, AutoencoderKL]:
    """(transformer, vae) in eval mode from a local diffusers folder; a missing part names the path."""
    folder = Path(folder)
    for part in ("transformer", "vae"):
        if not (folder / part / "config.json").is_file():
            raise FileNotFoundError(f"{folder / part}/config.json not found: imagenet.dit must be {WHERE_TO_GET_DIT}")
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer", low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    return transformer.to(device).eval(), vae.to(device).eval()


def save_dit(transformer: DiTTransformer2DModel, vae: AutoencoderKL, folder: str | Path) -> None:
    """``folder/transformer`` and ``folder/vae`` (safetensors); the caller makes it atomic."""
    transformer.save_pretrained(Path(folder) / "transformer")
    vae.save_pretrained(Path(folder) / "vae")


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
    """Images float (B, 3, 8 * sample_size, 8 * sample_size) in [-1, 1] for (class, seed) pairs."""
    null_label = transformer.config.num_embeds_ada_norm  # DiT's "null" class for CFG (1000)
    latents = sample_class_conditional(transformer, dit_scheduler(), class_labels, seeds, null_label=null_label,
                                       steps=steps, guidance_scale=guidance_scale, clamp=False, device=device)
    images = vae.decode(latents.to(device) / vae.config.scaling_factor).sample
    return images.float().clamp(-1, 1)
