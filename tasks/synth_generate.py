"""Stage synth_generate: a class-balanced synthetic set from the class-conditional diffusion model
(embedded UNet; DiT-XL/2 in the ImageNet profile: 250 steps, guidance 1.0, 50 per class).

Follows an explicit (class, seed) plan (``plan.parquet``), shard by shard, resumably (re-run the
same command after an interruption); writes ``data/synth_generate/`` (shards + manifest + plan).
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from sda.config import Params
from sda.io.atomic import sha256_file
from sda.io.resumable_jobs import plan_jobs
from sda.runtime import derive_seed
from sda.layout import OUTS
from tasks.common import run_resumable, stage_main

log = logging.getLogger("sda.synth_generate")


def _main(params: Params, args: argparse.Namespace) -> int:
    from sda.method.synth import generate_job, sample_plan, write_plan
    from sda.models.diffusion import DiffusionInfo, generator_weights

    cfg, model_dir = params.synth_generate, OUTS["diffusion_finetune"]
    info = DiffusionInfo.read(model_dir)
    seed = derive_seed(params.runtime.seed, "synth_generate")
    classes = info.generated_classes
    n = len(classes) * cfg.per_class
    log.info("generating %d images (%d per class, %d steps, w=%.2f)", n, cfg.per_class, cfg.steps, cfg.guidance_scale)
    jobs = plan_jobs(n, cfg.shard_size, "synth")
    make = functools.partial(generate_job, model_dir=str(model_dir), seed=seed, steps=cfg.steps,
                             guidance_scale=cfg.guidance_scale, batch_size=cfg.batch_size, device=str(args.device),
                             precision=cfg.precision)
    model_hash = sha256_file(generator_weights(model_dir, info))
    # batch size changes nothing (one generator per sample); precision does
    plan = {"synth_generate": cfg.model_dump(exclude={"batch_size"}), "seed": seed, "model": model_hash,
            "batch_size": cfg.batch_size}
    summary = run_resumable("synth_generate", params, jobs, make, plan=plan, meta={"seed": seed, "model": model_hash},
                  out=OUTS["synth_generate"], max_bytes=cfg.max_shard_bytes,
                  extra_files=lambda work: write_plan(sample_plan(classes, cfg.per_class, seed),
                                                      Path(work) / "plan.parquet"))
    return summary["new_items"]


if __name__ == "__main__":
    stage_main("synth_generate", __doc__, _main)
