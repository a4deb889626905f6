"""Stage synth_generate: a class-balanced synthetic set from the class-conditional diffusion model.

Follows an explicit (class, seed) plan (``plan.parquet``); writes ``data/synth_generate/``
(shards + manifest + plan).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from sda.diffusion import load_diffusion
from sda.params import Params, SynthGenerate
from sda.shards import atomic_dir, write_shards
from sda.synth import generate_samples, sample_plan, write_plan
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.synth_generate")


def run(cfg: SynthGenerate, seed: int, model_dir: Path, out: Path, device: torch.device) -> int:
    unet, scheduler, info = load_diffusion(model_dir, device)
    plan = sample_plan(info["num_classes"], cfg.per_class, seed)
    log.info("generating %d images (%d per class, %d steps, w=%.2f)", plan.num_rows, cfg.per_class,
             cfg.steps, cfg.guidance_scale)
    with atomic_dir(out) as tmp:
        write_plan(plan, tmp / "plan.parquet")
        samples = generate_samples(unet, scheduler, plan, null_label=info["null_label"], steps=cfg.steps,
                                   guidance_scale=cfg.guidance_scale, batch_size=cfg.batch_size, device=device)
        m = write_shards(samples, tmp, prefix="synth", maxcount=cfg.shard_maxcount,
                         meta={"model": str(model_dir), "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
                               "seed": seed})
    return m["count"]


def _main(params: Params, args: argparse.Namespace) -> None:
    run(params.synth_generate, params.runtime.seed, DATA / "diffusion_finetune", DATA / "synth_generate", args.device)


if __name__ == "__main__":
    stage_main("synth_generate", __doc__, _main)
