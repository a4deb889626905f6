"""Project whole shard sets with the DDA projection as resumable shard jobs, keys preserved.

One job per input shard: output shard ``<sub>/<name>`` holds the projections of input shard
``<sub>/<name>`` in the same order. Batch ``b`` of a shard draws its noise from
``derive_seed(seed, shard name, b)``, so the bytes depend on the inputs and params only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from sda.dda import project
from sda.diffusion import load_diffusion, to_uint8, to_unit_range
from sda.runtime import derive_seed
from sda.sharded import ShardJob, cached
from sda.shards import Sample, batched, iter_shard_file, read_manifest

__all__ = ["project_job", "project_uint8", "projection_jobs"]


def projection_jobs(src_root: str | Path, subdirs: list[str]) -> list[ShardJob]:
    """One job per shard of each shard set ``src_root/<sub>`` (``""`` for ``src_root`` itself)."""
    jobs, start = [], 0
    for sub in subdirs:
        for e in read_manifest(Path(src_root) / sub)["shards"]:
            name = str(Path(sub) / e["name"]) if sub else e["name"]
            jobs.append(ShardJob(name, start, start + e["count"], (("sha256", e["sha256"]),)))
            start += e["count"]
    return jobs


def project_job(
    job: ShardJob,
    *,
    model_dir: str,
    src_root: str,
    projection: dict[str, Any],
    seed: int,
    device: str = "cpu",
    bf16: bool = False,
) -> Iterator[Sample]:
    """The projections of input shard ``src_root/job.name``, in batches of ``projection['batch_size']``.

    ``projection`` holds the :class:`sda.params.Projection` fields. The model is loaded once per process.
    """
    unet, scheduler, info = cached(("diffusion", model_dir, device), lambda: load_diffusion(model_dir, device))
    for b, batch in enumerate(batched(iter_shard_file(Path(src_root) / job.name), projection["batch_size"])):
        gen = torch.Generator(device=device).manual_seed(derive_seed(seed, job.name, b))
        out = project_uint8(unet, scheduler, np.stack([s.image for s in batch]), projection,
                            null_label=info["null_label"], generator=gen, bf16=bf16)
        for s, img in zip(batch, out):
            yield Sample(key=s.key, image=img, label=s.label, meta=s.meta)


def project_uint8(
    unet: torch.nn.Module,
    scheduler: Any,
    images: np.ndarray,
    projection: dict[str, Any],
    *,
    null_label: int | None,
    generator: torch.Generator,
    bf16: bool = False,
) -> np.ndarray:
    """DDA projections of uint8 (B, H, W, 3) images as uint8 (B, H, W, 3), in one guidance batch.

    ``projection`` holds the :class:`sda.params.Projection` fields; the unconditional model is the
    diffusion model with ``null_label`` (``None``: an unconditional model such as ADM); ``generator``
    lives on the model's device.
    """
    dev = next(unet.parameters()).device
    p = projection
    labels = None if null_label is None else torch.full((len(images),), null_label, dtype=torch.long)
    y = project(unet, scheduler, to_unit_range(images, dev), respacing=p["respacing"], N=p["N"], D=p["D"],
                scale=p["scale"], per_sample_norm=p["per_sample_norm"], fix_off_by_one=p["fix_off_by_one"],
                class_labels=labels, generator=generator, autocast_bf16=bf16 and dev.type == "cuda")
    return to_uint8(y)
