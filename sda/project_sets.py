"""Project a whole shard set with the DDA projection, streaming batch by batch, keys preserved."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from sda.dda import project
from sda.diffusion import to_uint8, to_unit_range
from sda.runtime import derive_seed
from sda.shards import Sample, iter_batches, read_manifest, write_shards

if TYPE_CHECKING:
    from sda.params import Projection

__all__ = ["project_samples", "project_shard_set"]


def project_samples(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    shard_dir: str | Path,
    *,
    respacing: int,
    N: int,
    D: int,
    scale: float,
    per_sample_norm: bool,
    fix_off_by_one: bool,
    batch_size: int,
    null_label: int | None,
    seed: int,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    desc: str = "project",
) -> Iterator[Sample]:
    """Yield the projection of every sample of ``shard_dir`` (same key, label and metadata).

    Batches are consecutive runs of ``batch_size`` samples in shard order, and batch ``b`` draws
    its noise from ``derive_seed(seed, b)``: the output is a function of the inputs and params only.
    """
    device = torch.device(device)
    total = read_manifest(shard_dir)["count"]
    bar = tqdm(total=total, desc=desc, unit="img", leave=False)
    for b, batch in enumerate(iter_batches(shard_dir, batch_size)):
        x = to_unit_range(np.stack([s.image for s in batch]), device)
        labels = None if null_label is None else torch.full((len(batch),), null_label, dtype=torch.long)
        gen = torch.Generator(device=device).manual_seed(derive_seed(seed, b))
        y = project(unet, scheduler, x, respacing=respacing, N=N, D=D, scale=scale,
                    per_sample_norm=per_sample_norm, fix_off_by_one=fix_off_by_one, class_labels=labels,
                    generator=gen, autocast_bf16=bf16 and device.type == "cuda")
        for s, img in zip(batch, to_uint8(y)):
            yield Sample(key=s.key, image=img, label=s.label, meta=s.meta)
        bar.update(len(batch))
    bar.close()


def project_shard_set(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    src: str | Path,
    dst: str | Path,
    cfg: "Projection",
    *,
    null_label: int | None,
    seed: int,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    desc: str = "project",
) -> dict:
    """Project the shard set ``src`` into the existing, empty directory ``dst``; returns its manifest.

    Shards are named after ``src``'s directory; the manifest records the projection params.
    """
    samples = project_samples(unet, scheduler, src, respacing=cfg.respacing, N=cfg.N, D=cfg.D, scale=cfg.scale,
                              per_sample_norm=cfg.per_sample_norm, fix_off_by_one=cfg.fix_off_by_one,
                              batch_size=cfg.batch_size, null_label=null_label, seed=seed, device=device,
                              bf16=bf16, desc=desc)
    return write_shards(samples, dst, prefix=Path(src).name,
                        meta={"projected_from": Path(src).name, "projection": cfg.model_dump(), "seed": seed})
