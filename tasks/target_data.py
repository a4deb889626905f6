"""Stage target_data: the target domains, i.e. the chosen source split (``test`` for reported
numbers, ``val`` for tuning) clean and under each ImageNet-C corruption at one severity.

Writes ``data/target_data/<domain>/`` shard sets; keys are the split's keys in every domain.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm.auto import tqdm

from sda.domains.corruptions import corrupt_images
from sda.params import Params, TargetData
from sda.runtime import derive_seed
from sda.shards import Sample, atomic_dir, atomic_write_json, load_shards, write_shards
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.target_data")


def run(cfg: TargetData, seed: int, source_dir: Path, out: Path) -> list[str]:
    """Returns the domain names written (``clean`` first when included)."""
    split = load_shards(source_dir / cfg.split)
    domains = (["clean"] if cfg.include_clean else []) + list(cfg.corruptions)
    with atomic_dir(out) as tmp:
        for d in tqdm(domains, desc="target_data", unit="domain"):
            imgs = split.images if d == "clean" else corrupt_images(
                split.images, d, cfg.severity, derive_seed(seed, "target_data", d))
            (tmp / d).mkdir()
            samples = (Sample(key=k, image=im, label=int(y), meta={"domain": d})
                       for k, im, y in zip(split.keys, imgs, split.labels))
            write_shards(samples, tmp / d, prefix=d, maxcount=cfg.shard_maxcount,
                         meta={"domain": d, "severity": cfg.severity, "split": cfg.split, "seed": seed})
        atomic_write_json(tmp / "domains.json", {"domains": domains, "corruptions": list(cfg.corruptions),
                                                 "split": cfg.split, "severity": cfg.severity})
    log.info("%d domains x %d images from the %s split", len(domains), len(split.keys), cfg.split)
    return domains


def _main(params: Params, args: argparse.Namespace) -> None:
    run(params.target_data, params.runtime.seed, DATA / "source_data", DATA / "target_data")


if __name__ == "__main__":
    stage_main("target_data", __doc__, _main)
