"""The projection of whole shard sets as a resumable stage body, shared by the two projection
stages (``synth_align``, ``target_project``); not a stage itself. Both project with what
:func:`sda.layout.projector_dir` names: the method the synthetic set got is the one the targets get."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sda.config import Params
from sda.io.atomic import atomic_write_json, sha256_file
from sda.io.resumable_jobs import PROGRESS
from sda.runtime import derive_seed
from sda.layout import PROJECTION_COMPUTE, projector_dir
from tasks.common import run_resumable

if TYPE_CHECKING:
    from sda.method.dda import ProjectionCost



def write_compute(work: Path, projection_method: str) -> ProjectionCost:
    """``<work>/compute.json``: the work every shard job counted (:class:`sda.method.dda.ProjectionCost`,
    from the progress file), in total and per image."""
    from sda.method.dda import ProjectionCost

    cost = ProjectionCost()
    for entry in json.loads((work / PROGRESS).read_text())["shards"].values():
        cost.add(entry.get("stats") or ProjectionCost())
    # the projection's work, counted (content: no seconds)
    atomic_write_json(work / PROJECTION_COMPUTE, {"method": projection_method, **cost.as_dict(),
                                                  "forward_equivalents_per_image": round(cost.per_image(), 4)})
    return cost


def run_projection(stage: str, params: Params, device, src_root: Path, subdirs: list[str], out: Path, *,
                   model_dir: Path | None = None, extra_files: Callable[[Path], None] | None = None) -> dict:
    """Project the shard sets ``src_root/<sub>`` with the projector of ``model_dir`` (default:
    :func:`sda.layout.projector_dir`) into ``out/<sub>`` (keys kept), resumably; returns the run summary. The out's
    ``compute.json`` holds the work counted, ``extra_files(work_dir)`` adds more; the closing log line
    says the work per image, with the seconds."""
    from sda.method.projector import project_job, projection_jobs
    from sda.models.diffusion import unet_weights

    model_dir = model_dir or projector_dir(params.projection.method)
    seed = derive_seed(params.runtime.seed, stage)
    jobs = projection_jobs(src_root, subdirs)
    make = functools.partial(project_job, model_dir=str(model_dir), src_root=str(src_root),
                             projection=params.projection, seed=seed, device=str(device))
    model_hash = sha256_file(unet_weights(model_dir))
    meta = {"projection": params.projection.model_dump(), "seed": seed, "model": model_hash, "projected_from": str(src_root)}
    costs: list[ProjectionCost] = []
    def files(work: Path) -> None:
        costs.append(write_compute(work, params.projection.method))
        if extra_files:
            extra_files(work)

    summary = run_resumable(stage, params, jobs, make, plan=meta, meta=meta, out=out, extra_files=files)
    cost = costs[0]
    per_s = summary["seconds"] / summary["new_items"] if summary["new_items"] else None
    logging.getLogger(f"sda.{stage}").info(
        "%s: %d images, %.1f UNet forward-equivalents per image (%d forwards + 2 x %d input-gradient backwards)%s",
        params.projection.method, cost.images, cost.per_image(), cost.forwards, cost.backwards,
        f", {per_s:.3f} s per image here" if per_s else "")
    return summary
