"""The synthetic domain: a deterministic, class-balanced (class, seed) plan and its generation
(the embedded UNet, or a DiT: the ImageNet profile's, or the folder profile's with ``folder.dit``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision.transforms.v2.functional import InterpolationMode, resize

from sda.accel import autocast, name_oom
from sda.io.images import to_uint8
from sda.io.resumable_jobs import ShardJob
from sda.io.shards import Sample
from sda.method.sampling import sample_class_conditional, sample_dit
from sda.models.diffusion import DiffusionInfo, load_diffusion
from sda.models.dit import load_dit
from sda.runtime import derive_seed

__all__ = ["generate_job", "plan_row", "sample_plan", "write_plan"]


def plan_row(i: int, classes: Sequence[int], seed: int) -> dict[str, int | str]:
    """Global index i -> ``{index, key, class, seed}``, from the arguments and i alone.

    Classes are interleaved (``classes[i % len(classes)]``), so every prefix of the plan is
    class-balanced (remainders spread one per class in class order).
    """
    return {"index": i, "key": f"synth-{i:07d}", "class": int(classes[i % len(classes)]),
            "seed": derive_seed(seed, "synth", i)}


def sample_plan(classes: Sequence[int], per_class: int, seed: int) -> pa.Table:
    """The whole plan as a table: ``index`` int64, ``key`` string, ``class`` int64, ``seed`` int64."""
    rows = [plan_row(i, classes, seed) for i in range(len(classes) * per_class)]
    return pa.Table.from_pylist(rows, schema=pa.schema([("index", pa.int64()), ("key", pa.string()),
                                                        ("class", pa.int64()), ("seed", pa.int64())]))


def write_plan(plan: pa.Table, path: str | Path) -> None:
    pq.write_table(plan, str(path))


def generate_job(
    job: ShardJob,
    *,
    model_dir: str,
    seed: int,
    steps: int,
    guidance_scale: float,
    batch_size: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> Iterator[Sample]:
    """The samples of plan rows ``[job.start, job.stop)``, generated in batches of ``batch_size``.

    Each sample depends only on its (class, seed) row, so the shard's bytes do not depend on which
    worker runs the job. The model is loaded once per process. ``precision``: the model's autocast
    on CUDA (:func:`sda.accel.autocast`); a CUDA out-of-memory error names synth_generate.batch_size.
    """
    sample, info = _sampler(model_dir, device)
    classes = info.generated_classes
    rows = [plan_row(i, classes, seed) for i in range(job.start, job.stop)]
    for b in range(0, len(rows), batch_size):
        chunk = rows[b: b + batch_size]
        with autocast(device, precision), name_oom("synth_generate.batch_size", len(chunk), "generating"):
            x = sample([r["class"] for r in chunk], [r["seed"] for r in chunk], steps, guidance_scale)
        for r, img in zip(chunk, to_uint8(x)):
            yield Sample(key=r["key"], image=img, label=r["class"], meta={"seed": r["seed"], "index": r["index"]})


@functools.cache
def _sampler(model_dir: str, device: str) -> tuple[Callable[..., torch.Tensor], DiffusionInfo]:
    """``sample(classes, seeds, steps, guidance_scale) -> [-1, 1] images`` of the folder's generator
    and its info, loaded once per process."""
    info, dev = DiffusionInfo.read(model_dir), torch.device(device)
    if info.generator == "dit":
        transformer, vae = load_dit(Path(model_dir) / "dit", dev)
        size = info.output_size

        def sample(c, s, steps, w):
            x = sample_dit(transformer, vae, c, s, steps=steps, guidance_scale=w, device=dev)
            if size is not None and x.shape[-1] != size:  # antialiased: a DiT at 256 px for 32 px images
                x = resize(x, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(-1, 1)
            return x

        return sample, info
    unet, scheduler, _ = load_diffusion(model_dir, dev)
    return (lambda c, s, steps, w: sample_class_conditional(unet, scheduler, c, s, null_label=info.null_label,
                                                            steps=steps, guidance_scale=w, device=dev)), info
