"""Stage target_project: the DDA projection of every target domain, keys preserved.

Writes ``data/target_project/<domain>/`` for each domain of ``data/target_data/``.
"""

from __future__ import annotations

import argparse
import json
import logging

from sda.diffusion import load_diffusion
from sda.params import Params
from sda.project_sets import project_shard_set
from sda.runtime import derive_seed
from sda.shards import atomic_dir, atomic_write_json
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.target_project")


def _main(params: Params, args: argparse.Namespace) -> None:
    target_dir = DATA / "target_data"
    domains = json.loads((target_dir / "domains.json").read_text())["domains"]
    unet, scheduler, info = load_diffusion(DATA / "diffusion_finetune", args.device)
    seed = derive_seed(params.runtime.seed, "target_project")
    with atomic_dir(DATA / "target_project") as tmp:
        for i, d in enumerate(domains):
            (tmp / d).mkdir()
            m = project_shard_set(unet, scheduler, target_dir / d, tmp / d, params.projection,
                                  null_label=info["null_label"], seed=derive_seed(seed, d), device=args.device,
                                  bf16=params.runtime.bf16, desc=d)
            log.info("projected %-18s %d images (%d/%d)", d, m["count"], i + 1, len(domains))
        atomic_write_json(tmp / "domains.json", {"domains": domains})


if __name__ == "__main__":
    stage_main("target_project", __doc__, _main)
