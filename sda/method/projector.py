"""Project whole shard sets with the DDA projection as resumable shard jobs, keys preserved.

One job per input shard: output shard ``<sub>/<name>`` holds the projections of input shard
``<sub>/<name>`` in the same order. Batch ``b`` of a shard draws its noise from
``derive_seed(seed, shard name, b)``, so the bytes depend on the inputs and params only (with
``projection.batch_size: auto`` the batch, and so the batch-wide guidance norm, depends on the GPU's
free memory too: use ``per_sample_norm: true`` with it to keep results independent of the card).

On CUDA the fast mode of :mod:`sda.accel` applies (``projection.precision`` / ``channels_last`` /
``compile``) and the next batch is decoded and copied while the current one is projected.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch

from sda.accel import auto_batch_size, fast_model, name_oom, prefetch
from sda.config import Projection
from sda.io.images import to_uint8, to_unit_range
from sda.io.resumable_jobs import ShardJob
from sda.io.shards import Sample, batched, iter_shard_file, read_manifest
from sda.method.dda import ProjectionCost, project
from sda.method.distill import read_record, student_mismatch
from sda.models.diffusion import load_diffusion
from sda.runtime import derive_seed

__all__ = ["Projector", "project_job", "project_uint8", "projection_batch_size", "projection_jobs", "projector"]


def projection_jobs(src_root: str | Path, subdirs: list[str]) -> list[ShardJob]:
    """One job per shard of each shard set ``src_root/<sub>`` (``""`` for ``src_root`` itself)."""
    jobs, start = [], 0
    for sub in subdirs:
        for e in read_manifest(Path(src_root) / sub)["shards"]:
            name = str(Path(sub) / e["name"]) if sub else e["name"]
            jobs.append(ShardJob(name, start, start + e["count"], (("sha256", e["sha256"]),)))
            start += e["count"]
    return jobs


def projection_batch_size(unet: torch.nn.Module, scheduler: Any, projection: Projection, image_size: int,
                          null_label: int | None) -> int:
    """``projection.batch_size``, or for ``"auto"`` the largest power of two whose guided step fits
    the free memory of the model's GPU (:func:`sda.accel.auto_batch_size`; 32 on the CPU)."""
    if projection.batch_size != "auto":
        return int(projection.batch_size)
    dev = next(unet.parameters()).device

    def one_step(b: int) -> None:
        x = torch.zeros(b, image_size, image_size, 3, dtype=torch.uint8).numpy()
        project_uint8(unet, scheduler, x, projection.model_copy(update={"N": 1, "compile": "none", "batch_size": b}),
                      null_label=null_label, generator=torch.Generator(device=dev).manual_seed(0))

    return auto_batch_size(one_step, dev)


class Projector:
    """The DDA projection of a diffusion model folder's projector with the ``projection`` params: the
    model is loaded and, for ``batch_size: auto``, the batch size measured once. With
    ``projection.method: distilled``, ``model_dir`` is the distilled student (``data/synth_align/projector``),
    which must have been distilled with these params (else a ``ValueError`` says what differs)."""

    def __init__(self, model_dir: str | Path, projection: Projection, device: torch.device | str = "cpu"):
        if projection.method == "distilled":
            record = read_record(model_dir)
            if record is None or record.get("method") != "distilled":
                raise ValueError(f"{model_dir} holds no distilled projector (projection.method: distilled): run "
                                 "synth_align with these params (dvc repro synth_align), or pick another method")
            wrong = student_mismatch(record, projection)
            if wrong:
                raise ValueError(f"the projector in {model_dir} was distilled with other projection params "
                                 f"({'; '.join(wrong)}): run synth_align again (dvc repro synth_align)")
        self.device = torch.device(device)
        self.unet, self.scheduler, self.info = load_diffusion(model_dir, self.device)
        self.batch_size = projection_batch_size(self.unet, self.scheduler, projection, self.unet.config.sample_size,
                                                self.info.null_label)
        self.projection = projection.model_copy(update={"batch_size": self.batch_size})

    def __call__(self, images: np.ndarray | torch.Tensor, seed: int | Sequence[int],
                 cost: ProjectionCost | None = None) -> np.ndarray:
        """Projections of uint8 (B, H, W, 3) images, B <= ``batch_size``, as one guidance batch whose
        noise comes from ``seed`` (B seeds: each image's from its own): uint8 (B, H, W, 3). ``cost``
        counts the work."""
        gen: torch.Generator | list[torch.Generator]
        if isinstance(seed, (int, np.integer)):
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
        else:
            gen = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seed]
        return project_uint8(self.unet, self.scheduler, images, self.projection, null_label=self.info.null_label,
                             generator=gen, cost=cost)


@functools.cache
def projector(model_dir: str, device: str, projection: Projection) -> Projector:
    """One :class:`Projector` per process and arguments (a frozen ``Projection`` is hashable): a
    dask worker loads the model once for all its shards."""
    return Projector(model_dir, projection, device)


def project_job(
    job: ShardJob,
    *,
    model_dir: str,
    src_root: str,
    projection: Projection,
    seed: int,
    device: str = "cpu",
) -> Generator[Sample, None, dict[str, int]]:
    """The projections of input shard ``src_root/job.name``, in guidance batches of the projector's
    batch size; batch ``b`` draws its noise from ``derive_seed(seed, job.name, b)``. Returns (as the
    generator's value, which :func:`sda.io.resumable_jobs.write_shard` records as the job's ``stats``)
    the work counted (:class:`sda.method.dda.ProjectionCost`)."""
    proj = projector(model_dir, device, projection)
    cost = ProjectionCost()
    batches = batched(iter_shard_file(Path(src_root) / job.name), proj.batch_size)
    for b, (batch, x) in enumerate(prefetch(batches, lambda batch: torch.from_numpy(np.stack([s.image for s in batch])),
                                            device)):
        out = proj(x, derive_seed(seed, job.name, b), cost)
        for s, img in zip(batch, out):
            yield Sample(key=s.key, image=img, label=s.label, meta=s.meta)
    return cost.as_dict()


def project_uint8(
    unet: torch.nn.Module,
    scheduler: Any,
    images: np.ndarray | torch.Tensor,
    projection: Projection,
    *,
    null_label: int | None,
    generator: torch.Generator | list[torch.Generator],
    cost: ProjectionCost | None = None,
) -> np.ndarray:
    """DDA projections of uint8 (B, H, W, 3) images (NumPy, or a tensor on any device) as uint8
    (B, H, W, 3), in one guidance batch.

    ``projection``'s fast-mode fields (``channels_last``, ``compile``) apply here too; the
    unconditional model is the diffusion model with ``null_label`` (``None``: an unconditional model
    such as ADM); ``generator`` lives on the model's device (a list of B: each image's noise from its own,
so with ``per_sample_norm`` an image's projection does not depend on its batch mates). A CUDA out-of-memory error becomes a
    ``ValueError`` that names ``projection.batch_size``.
    """
    dev = next(unet.parameters()).device
    x = to_unit_range(images, dev)
    labels = None if null_label is None else torch.full((len(x),), null_label, dtype=torch.long)
    model = fast_model(unet, channels_last=projection.channels_last, compile=projection.compile)
    with name_oom("projection.batch_size", len(x), "projecting"):
        y = project(model, scheduler, x, projection, class_labels=labels, generator=generator, cost=cost)
    return to_uint8(y)
