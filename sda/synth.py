"""The synthetic domain: a deterministic, class-balanced (class, seed) plan and its generation
(the embedded UNet, or DiT in the ImageNet profile)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sda.accel import autocast, name_oom
from sda.diffusion import load_diffusion, sample_class_conditional, to_uint8
from sda.dit import load_dit, sample_dit
from sda.runtime import derive_seed
from sda.sharded import ShardJob, cached
from sda.shards import Sample

__all__ = ["generate_job", "generator_weights", "plan_classes", "plan_row", "sample_plan", "write_plan"]


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
    precision: str = "fp32",
) -> Iterator[Sample]:
    """The samples of plan rows ``[job.start, job.stop)``, generated in batches of ``batch_size``.

    Each sample depends only on its (class, seed) row, so the shard's bytes do not depend on which
    worker runs the job. The model is loaded once per process. ``precision``: the model's autocast
    on CUDA (:func:`sda.accel.autocast`); a CUDA out-of-memory error names synth_generate.batch_size.
    """
    info = json.loads((Path(model_dir) / "info.json").read_text())
    sample = cached(("generator", model_dir, device), lambda: _load_sampler(Path(model_dir), info, torch.device(device)))
    classes = plan_classes(info)
    rows = [plan_row(i, classes, seed) for i in range(job.start, job.stop)]
    for b in range(0, len(rows), batch_size):
        chunk = rows[b: b + batch_size]
        with autocast(device, precision), name_oom("synth_generate.batch_size", len(chunk), "generating"):
            x = sample([r["class"] for r in chunk], [r["seed"] for r in chunk], steps, guidance_scale)
        for r, img in zip(chunk, to_uint8(x)):
            yield Sample(key=r["key"], image=img, label=r["class"], meta={"seed": r["seed"], "index": r["index"]})


def generator_weights(model_dir: str | Path, info: dict) -> Path:
    """The weights file that identifies the class-conditional generator of a diffusion_finetune folder."""
    sub = "dit/transformer" if info.get("generator") == "dit" else "unet"
    return Path(model_dir) / sub / "diffusion_pytorch_model.safetensors"


def _load_sampler(model_dir: Path, info: dict, device: torch.device) -> Callable[..., torch.Tensor]:
    """``sample(classes, seeds, steps, guidance_scale) -> [-1, 1] images`` of the folder's generator."""
    if info.get("generator") == "dit":
        transformer, vae = load_dit(model_dir / "dit", device)
        return lambda c, s, steps, w: sample_dit(transformer, vae, c, s, steps=steps, guidance_scale=w, device=device)
    unet, scheduler, _ = load_diffusion(model_dir, device)
    return lambda c, s, steps, w: sample_class_conditional(unet, scheduler, c, s, null_label=info["null_label"],
                                                           steps=steps, guidance_scale=w, device=device)
