"""Stage synth_align ("Mix of Diffusion"): re-project the synthetic set with the DDA projection of
the unconditional model, so it carries the artefacts of projected target images.

Writes ``data/synth_align/`` with the same keys as ``data/synth_generate/``.
"""

from __future__ import annotations

import argparse
import logging

from sda.diffusion import load_diffusion
from sda.params import Params
from sda.project_sets import project_shard_set
from sda.runtime import derive_seed
from sda.shards import atomic_dir
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.synth_align")


def _main(params: Params, args: argparse.Namespace) -> None:
    unet, scheduler, info = load_diffusion(DATA / "diffusion_finetune", args.device)
    with atomic_dir(DATA / "synth_align") as tmp:
        m = project_shard_set(unet, scheduler, DATA / "synth_generate", tmp, params.projection,
                              null_label=info["null_label"], seed=derive_seed(params.runtime.seed, "synth_align"),
                              device=args.device, bf16=params.runtime.bf16, desc="synth_align")
    log.info("projected %d synthetic images", m["count"])


if __name__ == "__main__":
    stage_main("synth_align", __doc__, _main)
