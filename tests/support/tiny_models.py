"""Tiny random-weight models of the paper's architectures (the same code paths), shared by the tests
and ``bench/`` (which times the full-size configs beside them)."""

from __future__ import annotations

from pathlib import Path

# guided-diffusion's flags of a tiny ADM (32 px); ADM_256_UNCOND (sda.models.adm_flags) is the paper's
ADM_TINY_FLAGS = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "num_head_channels": 16,
                  "attention_resolutions": "8", "channel_mult": "1,2,2", "learn_sigma": True,
                  "resblock_updown": True, "use_scale_shift_norm": True, "class_cond": False}
DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
DIT_TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                sample_size=4, patch_size=2, num_embeds_ada_norm=1000)
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, latent_channels=4, sample_size=256)
VAE_TINY = dict(SD_VAE, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8, sample_size=32)


def tiny_unet():
    """A random 16 px class-conditional UNet of three classes (seed 0), in training mode: the projector of
    the relabel tests' model folders and the unit tests' ``tiny_unet`` fixture."""
    import torch

    from sda.models.diffusion import build_unet

    torch.manual_seed(0)
    return build_unet(16, num_classes=3, block_out_channels=(8, 16), layers_per_block=1,
                      attention_levels=(False, True), norm_num_groups=4)


def tiny_dit():
    """A random DiT of 4 px latents (``DIT_TINY``) and its VAE (``VAE_TINY``: 32 px images), seed 0, in
    eval mode: ``(transformer, vae)``."""
    import torch
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(**DIT_TINY).eval(), AutoencoderKL(**VAE_TINY).eval()


def make_diffusion_models(root: Path) -> Path:
    """``root/models``: a guided-diffusion-format ADM state dict (``adm.pt``, ``ADM_TINY_FLAGS``) and a
    diffusers DiT folder (``dit/``: ImageNet's 1,000-class table, 32 px through a tiny VAE), random
    weights of the same code path as the paper's models. Returns the folder."""
    import torch
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DModel

    from sda.models.adm import adm_unet_config, diffusers_to_adm_state_dict

    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DModel(**adm_unet_config(**ADM_TINY_FLAGS))
    torch.save(diffusers_to_adm_state_dict(unet.state_dict(), **ADM_TINY_FLAGS), models / "adm.pt")
    dit = DiTTransformer2DModel(**DIT_TINY)
    vae = AutoencoderKL(**VAE_TINY)
    dit.save_pretrained(models / "dit" / "transformer")
    vae.save_pretrained(models / "dit" / "vae")
    return models
