"""Stage synth_align ("Mix of Diffusion"): re-project the synthetic set with the projection of the
unconditional model, so it carries the artefacts of projected target images.

Resumable shard jobs (one per synthetic shard); writes ``data/synth_align/`` with the same keys as
``data/synth_generate/``, ``compute.json`` (the work counted) and ``projector/``: what projects, for
``target_project``, ``classifier_align`` and relabelling (``projector.json``: the method and its
settings). With ``projection.method: distilled`` the one-evaluation student is distilled here first
(:mod:`sda.method.distill`, on the synthetic images; resumable: a finished student is reused) and
``projector/`` holds it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

from sda.config import Params
from sda.io.atomic import atomic_write_json, clean_stale_temps, sha256_file
from sda.layout import MODELS, OUTS, WORK
from sda.runtime import derive_seed
from tasks.common import stage_main
from tasks.projection_stage import run_projection

log = logging.getLogger("sda.synth_align")


def distilled_projector(params: Params, device) -> Path:
    """The student of ``projection.method: distilled`` in ``data/.work/distill-<key>/``, trained unless a
    finished one of the same inputs and params is there (the key: the projection's record, the projector's
    weights, the synthetic set's manifest, the seed)."""
    from sda.io.shards import MANIFEST
    from sda.method.distill import projection_record, read_record, train_projector
    from sda.models.diffusion import unet_weights

    seed = derive_seed(params.runtime.seed, "synth_align", "distill")
    diffusion, synth = OUTS["diffusion_finetune"], OUTS["synth_generate"]
    key = hashlib.sha256(json.dumps({
        "projection": projection_record(params.projection), "seed": seed,
        # how the teacher and the student ran: their bytes depend on it on a GPU
        "precision": params.projection.precision, "deterministic": params.runtime.deterministic,
        "model": sha256_file(unet_weights(diffusion)),
        "images": sha256_file(synth / MANIFEST)}, sort_keys=True).encode()).hexdigest()
    out = WORK / f"distill-{key[:16]}"
    remove_other_students(keep=out)
    if read_record(out) is not None:
        log.info("reusing the distilled projector in %s", out)
        return out
    train_projector(diffusion, synth, out, params.projection, seed=seed, device=device)
    return out


def remove_other_students(keep: Path | None = None) -> None:
    """Remove the work folders of students other than ``keep`` (other params or inputs; their half-written
    temporaries too)."""
    clean_stale_temps(WORK, "distill-*")
    for stale in WORK.glob("distill-*"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)


def _main(params: Params, args: argparse.Namespace) -> int:
    from sda.method.distill import RECORD, projection_record

    projection = params.projection
    if projection.method == "distilled":
        student = distilled_projector(params, args.device)
    else:
        student = None
        remove_other_students()

    def projector_files(work: Path) -> None:
        dst = work / MODELS["projector"].name
        shutil.rmtree(dst, ignore_errors=True)  # a run killed after writing it, resumed
        if student is not None:
            shutil.copytree(student, dst)
        else:
            dst.mkdir()
            atomic_write_json(dst / RECORD, projection_record(projection))

    summary = run_projection("synth_align", params, args.device, OUTS["synth_generate"], [""], OUTS["synth_align"],
                             model_dir=student or OUTS["diffusion_finetune"], extra_files=projector_files)
    if student is not None:
        shutil.rmtree(student, ignore_errors=True)
    return summary["new_items"]


if __name__ == "__main__":
    stage_main("synth_align", __doc__, _main)
