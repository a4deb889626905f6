"""The diffusion model folder every stage reads: the projector (``unet/`` + ``scheduler/``,
``save_pretrained``), the generator (the same UNet in the embedded profile, ``dit/`` in the ImageNet
profile) and ``info.json`` (:class:`DiffusionInfo`); plus the embedded profile's UNet.

The embedded profile trains one class-conditional ``UNet2DModel`` with a "null" class: it is both
the unconditional projector (label = ``num_classes``) and the class-conditional generator
(docs/method.md, "The embedded domain").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from pydantic import BaseModel, ConfigDict

from sda.io.atomic import atomic_dir, atomic_write_json

__all__ = ["DiffusionInfo", "build_unet", "generator_weights", "load_diffusion", "save_diffusion", "unet_weights"]

INFO = "info.json"


class DiffusionInfo(BaseModel):
    """``info.json`` of a diffusion model folder. Fields left unset are not written (the embedded
    and ImageNet profiles write different ones), so the file holds what its stage knew.

    ``null_label``: the class label that makes the UNet unconditional (``None``: an unconditional
    projector such as ADM); ``classes``: the class subset to generate (``None``: all
    ``num_classes``); ``generator``: ``"dit"`` when ``dit/`` holds the generator, else the UNet.
    ``trained_steps``: the steps actually trained (the probe may stop or extend training);
    ``probe``: the probe scores while training and the checkpoint kept (``diffusion_finetune``).
    ``output_size``: the side in pixels the generator's samples are resized to (a DiT that works at
    another size than the domain's images); ``None``: as they come.
    """

    model_config = ConfigDict(extra="forbid")

    profile: str | None = None
    num_classes: int
    classes: list[int] | None = None
    null_label: int | None = None
    generator: str | None = None
    parameters: int | None = None
    final_loss: float | None = None
    loss_every_50_steps: list[float] | None = None
    adm_checkpoint: str | None = None
    dit: str | None = None
    finetune_steps: int | None = None
    seed: int | None = None
    losses: dict[str, list[float]] | None = None
    trained_steps: int | None = None
    probe: dict[str, Any] | None = None
    output_size: int | None = None

    @property
    def generated_classes(self) -> list[int]:
        """The classes the generator produces: the ``classes`` subset, or all."""
        return list(self.classes or range(self.num_classes))

    @classmethod
    def read(cls, model_dir: str | Path) -> "DiffusionInfo":
        path = Path(model_dir) / INFO
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the diffusion_finetune stage first")
        return cls.model_validate_json(path.read_text())


def build_unet(
    image_size: int,
    num_classes: int,
    block_out_channels: Sequence[int],
    layers_per_block: int,
    attention_levels: Sequence[bool],
    norm_num_groups: int = 8,
) -> UNet2DModel:
    """A small class-conditional UNet; class ``num_classes`` is the "null" (unconditional) label."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        attention_head_dim=min(32, block_out_channels[-1]),
        num_class_embeds=num_classes + 1,
    )


def save_diffusion(out_dir: str | Path, unet: UNet2DModel, scheduler: DDPMScheduler, info: DiffusionInfo | None = None,
                   dit: tuple[DiTTransformer2DModel, AutoencoderKL] | None = None) -> None:
    """Write a diffusion model folder atomically: ``unet/`` and ``scheduler/`` (``save_pretrained``),
    ``dit/transformer`` + ``dit/vae`` when ``dit`` is given, ``info.json`` when ``info`` is."""
    with atomic_dir(out_dir) as tmp:
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        if dit is not None:
            dit[0].save_pretrained(tmp / "dit" / "transformer")
            dit[1].save_pretrained(tmp / "dit" / "vae")
        if info is not None:
            atomic_write_json(tmp / INFO, info.model_dump(exclude_unset=True))


def load_diffusion(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[UNet2DModel, DDPMScheduler, DiffusionInfo]:
    """The projector of a diffusion model folder, in eval mode on ``device``, with its info."""
    info = DiffusionInfo.read(model_dir)
    unet = UNet2DModel.from_pretrained(Path(model_dir) / "unet", low_cpu_mem_usage=False).to(device).eval()
    return unet, DDPMScheduler.from_pretrained(Path(model_dir) / "scheduler"), info


def unet_weights(model_dir: str | Path) -> Path:
    """The weights file of a diffusion model folder's UNet (the projector): what identifies it."""
    return Path(model_dir) / "unet" / SAFETENSORS_WEIGHTS_NAME


def generator_weights(model_dir: str | Path, info: DiffusionInfo) -> Path:
    """The weights file that identifies the class-conditional generator of a diffusion model folder."""
    return Path(model_dir) / "dit" / "transformer" / SAFETENSORS_WEIGHTS_NAME if info.generator == "dit" else unet_weights(model_dir)
