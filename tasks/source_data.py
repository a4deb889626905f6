"""Stage source_data: the source domain as WebDataset shard sets, and its class list.

Embedded profile: the digits as ``data/source_data/{train,val,test}/``. ImageNet profile: the class
list of ``imagenet.val_dir`` (``classes.json`` with the selected subset) and, when
``imagenet.finetune_steps > 0``, ``train/`` from ``imagenet.train_dir`` for diffusion fine-tuning.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sda.config import ImageNet, Params, SourceData
from sda.domains.digits import CLASS_NAMES, render_digits, split_digits
from sda.domains.imagenet import class_names, iter_domain, list_images, select_classes
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.shards import Sample, write_shards
from sda.runtime import derive_seed
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


def run_imagenet(cfg: ImageNet, out: Path) -> dict[str, int]:
    """ImageNet: ``classes.json`` (all names in index order + the selected indices) and, for
    fine-tuning, the selected train images at ``cfg.image_size``."""
    names = class_names(cfg.val_dir, cfg.val_labels)
    selected = select_classes(names, cfg.classes)
    counts = {}
    with atomic_dir(out) as tmp:
        if cfg.finetune_steps > 0:
            if cfg.train_dir is None:
                raise ValueError("imagenet.finetune_steps > 0 needs imagenet.train_dir (source images, class folders)")
            refs = list_images(cfg.train_dir, names, classes=cfg.classes, per_class=cfg.images_per_class)
            (tmp / "train").mkdir()
            samples = (Sample(key=k, image=im, label=y) for k, im, y in iter_domain(refs, cfg.image_size, "train"))
            counts["train"] = write_shards(samples, tmp / "train", meta={"split": "train", "root": cfg.train_dir})["count"]
        atomic_write_json(tmp / "classes.json", {"names": names, "selected": selected})
    log.info("%d classes (%d selected), %s", len(names), len(selected), counts or "no train images")
    return counts


def _main(params: Params, args: argparse.Namespace) -> None:
    out = DATA / "source_data"
    if params.profile == "imagenet":
        run_imagenet(params.imagenet, out)
    else:
        run(params.source_data, params.runtime.seed, out)
    # content only: runtime's device / threads / workers do not change these bytes, the seed does
    atomic_write_json(out / "params.json", {**section_json(params, "source_data", "imagenet"),
                                            "seed": params.runtime.seed})


if __name__ == "__main__":
    stage_main("source_data", __doc__, _main)
