"""Stage target_data: the target domains.

Embedded profile: the chosen source split (``test`` for reported numbers, ``val`` for tuning) clean
and under each ImageNet-C corruption at one severity (corrupt-tta). ImageNet profile: ImageNet val
(``clean``), the ImageNet-C files of the same images for each chosen corruption and severity
(``<corruption>``, or ``<corruption>_s<severity>`` when several severities are chosen), and
ImageNet-W (``imagenet_w``), all at ``imagenet.image_size`` through guided-diffusion's loader.

Writes ``data/target_data/<domain>/`` shard sets (keys are the same in every domain) and
``domains.json`` (domains, the corruption domains that the mean is taken over).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm.auto import tqdm

from sda.config import ImageNet, Params, TargetData
from sda.domains.corruptions import corrupt_images
from sda.domains.imagenet import class_names, imagenet_c_refs, iter_domain, list_images
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.shards import Sample, load_shards, write_shards
from sda.runtime import derive_seed
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
                                                 "corruption_domains": list(cfg.corruptions),
                                                 "split": cfg.split, "severity": cfg.severity})
    log.info("%d domains x %d images from the %s split", len(domains), len(split.keys), cfg.split)
    return domains


def run_imagenet(cfg: TargetData, inet: ImageNet, out: Path) -> list[str]:
    """ImageNet val / ImageNet-C / ImageNet-W domains of the selected subset; returns their names."""
    names = class_names(inet.val_dir, inet.val_labels)
    val = list_images(inet.val_dir, names, label_file=inet.val_labels, classes=inet.classes,
                      per_class=inet.images_per_class)
    plan: list[tuple[str, list]] = [("clean", val)] if cfg.include_clean else []
    corruption_domains = []
    if inet.imagenet_c_dir is not None:
        for sev in inet.severities:
            for c in cfg.corruptions:
                d = c if len(inet.severities) == 1 else f"{c}_s{sev}"
                plan.append((d, imagenet_c_refs(inet.imagenet_c_dir, c, sev, val, names)))  # checks every file first
                corruption_domains.append(d)
    if inet.imagenet_w:
        plan.append(("imagenet_w", val))
    if not corruption_domains:
        raise ValueError("no corruption domain: set imagenet.imagenet_c_dir (and target_data.corruptions)")
    with atomic_dir(out) as tmp:
        for d, refs in tqdm(plan, desc="target_data", unit="domain"):
            (tmp / d).mkdir()
            samples = (Sample(key=k, image=im, label=y, meta={"domain": d})
                       for k, im, y in iter_domain(refs, inet.image_size, d, eval_resize=inet.resize_size,
                                                            eval_crop=inet.crop_size))
            write_shards(samples, tmp / d, prefix=d, maxcount=cfg.shard_maxcount,
                         meta={"domain": d, "image_size": inet.image_size})
        atomic_write_json(tmp / "domains.json", {"domains": [d for d, _ in plan], "corruptions": list(cfg.corruptions),
                                                 "corruption_domains": corruption_domains,
                                                 "severities": list(inet.severities), "split": "imagenet-val"})
    log.info("%d domains x %d images (%d classes)", len(plan), len(val), len({r.label for r in val}))
    return [d for d, _ in plan]


def _main(params: Params, args: argparse.Namespace) -> None:
    if params.profile == "imagenet":
        run_imagenet(params.target_data, params.imagenet, DATA / "target_data")
    else:
        run(params.target_data, params.runtime.seed, DATA / "source_data", DATA / "target_data")


if __name__ == "__main__":
    stage_main("target_data", __doc__, _main)
