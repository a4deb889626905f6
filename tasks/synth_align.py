"""Stage synth_align ("Mix of Diffusion"): re-project the synthetic set with the DDA projection of
the unconditional model, so it carries the artefacts of projected target images.

Resumable shard jobs (one per synthetic shard); writes ``data/synth_align/`` with the same keys as
``data/synth_generate/``.
"""

from __future__ import annotations

import argparse
import functools

from sda.params import Params
from sda.project_sets import project_job, projection_jobs
from sda.runtime import derive_seed
from sda.shards import sha256_file
from tasks.common import DATA, run_resumable, stage_main


def run_projection(stage: str, params: Params, args: argparse.Namespace, src_root, subdirs: list[str], out) -> dict:
    """Project the shard sets ``src_root/<sub>`` into ``out/<sub>`` (shared by target_project)."""
    model_dir = DATA / "diffusion_finetune"
    seed = derive_seed(params.runtime.seed, stage)
    cfg = params.projection.model_dump()
    jobs = projection_jobs(src_root, subdirs)
    make = functools.partial(project_job, model_dir=str(model_dir), src_root=str(src_root), projection=cfg,
                             seed=seed, device=str(args.device))
    model_hash = sha256_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    meta = {"projection": cfg, "seed": seed, "model": model_hash, "projected_from": str(src_root)}
    return run_resumable(stage, params, jobs, make, plan=meta, meta=meta, out=out)


def _main(params: Params, args: argparse.Namespace) -> int:
    return run_projection("synth_align", params, args, DATA / "synth_generate", [""], DATA / "synth_align")["new_items"]


if __name__ == "__main__":
    stage_main("synth_align", __doc__, _main)
