"""DiT-XL/2 (Peebles & Xie 2023), the class-conditional generator of the ImageNet profile (and of the
folder profile with ``folder.dit``): a diffusers DiT folder (``transformer/`` =
``DiTTransformer2DModel``, ``vae/`` = ``AutoencoderKL``, as ``facebook/DiT-XL-2-256`` ships) read
from a local path. Sampling: :func:`sda.method.sampling.sample_dit`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

__all__ = ["WHERE_TO_GET_DIT", "dit_image_size", "load_dit", "new_class_table"]

WHERE_TO_GET_DIT = ("a diffusers DiT folder with transformer/ and vae/ (e.g. a local copy of the "
                    "facebook/DiT-XL-2-256 repository from the Hugging Face hub)")


def load_dit(folder: str | Path, device: torch.device | str = "cpu",
             key: str = "imagenet.dit") -> tuple[DiTTransformer2DModel, AutoencoderKL]:
    """(transformer, vae) in eval mode from a local diffusers folder; a missing part names the path
    and ``key``, the setting that points at it."""
    folder = Path(folder)
    for part in ("transformer", "vae"):
        if not (folder / part / "config.json").is_file():
            raise FileNotFoundError(f"{folder / part}/config.json not found: {key} must be {WHERE_TO_GET_DIT}")
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer", low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    return transformer.to(device).eval(), vae.to(device).eval()


def dit_image_size(transformer: DiTTransformer2DModel, vae: AutoencoderKL) -> int:
    """The side in pixels of the images the DiT was trained on: its latent side times the VAE's
    downsampling factor (2 per encoder block but the last)."""
    return transformer.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)


def new_class_table(transformer: DiTTransformer2DModel, num_classes: int) -> DiTTransformer2DModel:
    """Replace the DiT's class embedding (ImageNet's 1,000 classes and a "null" row in every block)
    by one of ``num_classes`` classes plus the null class, in place; the config follows, so
    ``save_pretrained`` / ``from_pretrained`` and the sampler (null label = ``num_classes``) agree.

    Every new row starts as the pretrained null embedding, the unconditional model the DiT already
    is: fine-tuning on labelled images then moves each class row towards its class, while the null
    row keeps the unconditional branch that classifier-free guidance needs. Deterministic: no draw.
    """
    for block in transformer.transformer_blocks:
        old: LabelEmbedding = block.norm1.emb.class_embedder
        null = old.embedding_table.weight.data[old.num_classes]
        new = LabelEmbedding(num_classes, old.embedding_table.embedding_dim, old.dropout_prob)
        new.embedding_table.weight.data.copy_(null.expand(num_classes + 1, -1))
        block.norm1.emb.class_embedder = new.to(old.embedding_table.weight.device)
    transformer.register_to_config(num_embeds_ada_norm=num_classes)
    return transformer
