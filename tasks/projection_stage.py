"""The DDA projection of whole shard sets as a resumable stage body, shared by the two projection
stages (``synth_align``, ``target_project``); not a stage itself."""

from __future__ import annotations

import functools
from pathlib import Path

from sda.config import Params
from sda.io.atomic import sha256_file
from sda.method.projector import project_job, projection_jobs
from sda.runtime import derive_seed
from sda.layout import OUTS
from tasks.common import run_resumable


def run_projection(stage: str, params: Params, device, src_root: Path, subdirs: list[str], out: Path) -> dict:
    """Project the shard sets ``src_root/<sub>`` with the diffusion model of ``data/diffusion_finetune``
    into ``out/<sub>`` (keys kept), resumably; returns the run summary."""
    model_dir = OUTS["diffusion_finetune"]
    seed = derive_seed(params.runtime.seed, stage)
    jobs = projection_jobs(src_root, subdirs)
    make = functools.partial(project_job, model_dir=str(model_dir), src_root=str(src_root),
                             projection=params.projection, seed=seed, device=str(device))
    model_hash = sha256_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    meta = {"projection": params.projection.model_dump(), "seed": seed, "model": model_hash, "projected_from": str(src_root)}
    return run_resumable(stage, params, jobs, make, plan=meta, meta=meta, out=out)
