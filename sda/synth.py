"""The synthetic domain: a deterministic, class-balanced (class, seed) plan and its generation
(the embedded UNet, or DiT in the ImageNet profile)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sda.diffusion import load_diffusion, sample_class_conditional, to_uint8
from sda.dit import load_dit, sample_dit
from sda.runtime import derive_seed
from sda.sharded import ShardJob, cached
from sda.shards import Sample

__all__ = ["generate_job", "plan_classes", "plan_row", "sample_plan", "write_plan"]


def plan_row(i: int, classes: Sequence[int], seed: int) -> dict[str, int | str]:
    """Global index i -> ``{index, key, class, seed}``, from the arguments and i alone.

    Classes are interleaved (``classes[i % len(classes)]``), so every prefix of the plan is
    class-balanced (remainders spread one per class in class order).
    """
    return {"index": i, "key": f"synth-{i:07d}", "class": int(classes[i % len(classes)]),
            "seed": derive_seed(seed, "synth", i)}


def plan_classes(info: dict) -> list[int]:
    """The classes a diffusion_finetune ``info.json`` generates: its ``classes`` subset, or all."""
    return list(info.get("classes") or range(info["num_classes"]))


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
) -> Iterator[Sample]:
    """The samples of plan rows ``[job.start, job.stop)``, generated in batches of ``batch_size``.

    Each sample depends only on its (class, seed) row, so the shard's bytes do not depend on which
    worker runs the job. The model is loaded once per process.
    """
    info = json.loads((Path(model_dir) / "info.json").read_text())
    if info.get("generator") == "dit":
        transformer, vae = cached(("dit", model_dir, device), lambda: load_dit(Path(model_dir) / "dit", device))
    else:
        unet, scheduler, _ = cached(("diffusion", model_dir, device), lambda: load_diffusion(model_dir, device))
    rows = [plan_row(i, plan_classes(info), seed) for i in range(job.start, job.stop)]
    for b in range(0, len(rows), batch_size):
        chunk = rows[b: b + batch_size]
        classes, seeds = [r["class"] for r in chunk], [r["seed"] for r in chunk]
        if info.get("generator") == "dit":
            x = sample_dit(transformer, vae, classes, seeds, steps=steps, guidance_scale=guidance_scale,
                           device=torch.device(device))
        else:
            x = sample_class_conditional(unet, scheduler, classes, seeds, null_label=info["null_label"], steps=steps,
                                         guidance_scale=guidance_scale, device=torch.device(device))
        for r, img in zip(chunk, to_uint8(x)):
            yield Sample(key=r["key"], image=img, label=r["class"], meta={"seed": r["seed"], "index": r["index"]})
