"""The synthetic domain: a deterministic, class-balanced (class, seed) plan and its generation."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from sda.diffusion import sample_class_conditional, to_uint8
from sda.runtime import derive_seed
from sda.shards import Sample

__all__ = ["generate_samples", "sample_plan", "write_plan"]


def sample_plan(num_classes: int, per_class: int, seed: int) -> pa.Table:
    """Global index i -> (key, class, seed), derived only from the arguments and i.

    Class-balanced and interleaved (i % num_classes), so any prefix of the plan is balanced too.
    Columns: ``index`` int64, ``key`` string, ``class`` int64, ``seed`` int64.
    """
    n = num_classes * per_class
    idx = list(range(n))
    return pa.table({
        "index": pa.array(idx, pa.int64()),
        "key": pa.array([f"synth-{i:07d}" for i in idx]),
        "class": pa.array([i % num_classes for i in idx], pa.int64()),
        "seed": pa.array([derive_seed(seed, "synth", i) for i in idx], pa.int64()),
    })


def write_plan(plan: pa.Table, path: str | Path) -> None:
    pq.write_table(plan, str(path))


def generate_samples(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    plan: pa.Table,
    *,
    null_label: int,
    steps: int,
    guidance_scale: float,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Iterator[Sample]:
    """Generate the plan in order, batch by batch; yields one :class:`Sample` per plan row."""
    rows = plan.to_pylist()
    for i in tqdm(range(0, len(rows), batch_size), desc="synth_generate", unit="batch"):
        chunk = rows[i: i + batch_size]
        x = sample_class_conditional(unet, scheduler, [r["class"] for r in chunk], [r["seed"] for r in chunk],
                                     null_label=null_label, steps=steps, guidance_scale=guidance_scale,
                                     device=device)
        for r, img in zip(chunk, to_uint8(x)):
            yield Sample(key=r["key"], image=img, label=r["class"], meta={"seed": r["seed"], "index": r["index"]})
