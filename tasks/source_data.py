"""Stage source_data: the embedded digits domain as train / val / test WebDataset shard sets.

Writes ``data/source_data/{train,val,test}/`` (shards + manifest) and ``classes.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sda.domains.digits import CLASS_NAMES, render_digits, split_digits
from sda.params import Params, SourceData
from sda.runtime import derive_seed
from sda.shards import Sample, atomic_dir, atomic_write_json, write_shards
from tasks.common import DATA, section_json, stage_main

log = logging.getLogger("sda.source_data")


def run(cfg: SourceData, seed: int, out: Path) -> dict[str, int]:
    """Render, split and shard the digits; returns the sample count per split."""
    s = derive_seed(seed, "source_data")
    images, labels = render_digits(cfg.image_size, cfg.max_shift, cfg.min_contrast, seed=s)
    splits = split_digits(images, labels, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=s % (2**31))
    counts = {}
    with atomic_dir(out) as tmp:
        for name, sp in splits.items():
            (tmp / name).mkdir()
            samples = (
                Sample(key=f"{name}-{int(idx):05d}", image=img, label=int(y), meta={"digits_index": int(idx)})
                for img, y, idx in zip(sp.images, sp.labels, sp.index)
            )
            m = write_shards(samples, tmp / name, maxcount=cfg.shard_maxcount,
                             meta={"split": name, "seed": seed, "image_size": cfg.image_size})
            counts[name] = m["count"]
            log.info("%s: %d images in %d shard(s)", name, m["count"], len(m["shards"]))
        atomic_write_json(tmp / "classes.json", {"names": list(CLASS_NAMES)})
    return counts


def _main(params: Params, args: argparse.Namespace) -> None:
    out = DATA / "source_data"
    run(params.source_data, params.runtime.seed, out)
    atomic_write_json(out / "params.json", section_json(params, "source_data", "runtime"))


if __name__ == "__main__":
    stage_main("source_data", __doc__, _main)
