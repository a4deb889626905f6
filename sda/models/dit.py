"""DiT-XL/2 (Peebles & Xie 2023), the ImageNet profile's class-conditional generator: a diffusers
DiT folder (``transformer/`` = ``DiTTransformer2DModel``, ``vae/`` = ``AutoencoderKL``, as
``facebook/DiT-XL-2-256`` ships) read from a local path. Sampling: :func:`sda.method.sampling.sample_dit`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel

__all__ = ["WHERE_TO_GET_DIT", "load_dit"]

WHERE_TO_GET_DIT = ("a diffusers DiT folder with transformer/ and vae/ (e.g. a local copy of the "
                    "facebook/DiT-XL-2-256 repository from the Hugging Face hub); set imagenet.dit to it")


def load_dit(folder: str | Path, device: torch.device | str = "cpu") -> tuple[DiTTransformer2DModel, AutoencoderKL]:
    """(transformer, vae) in eval mode from a local diffusers folder; a missing part names the path."""
    folder = Path(folder)
    for part in ("transformer", "vae"):
        if not (folder / part / "config.json").is_file():
            raise FileNotFoundError(f"{folder / part}/config.json not found: imagenet.dit must be {WHERE_TO_GET_DIT}")
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer", low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    return transformer.to(device).eval(), vae.to(device).eval()
