"""The ``embedded`` domain: the built-in digits (:mod:`sda.domains.digits`) as the source, the chosen
split clean and under each ImageNet-C corruption at one severity as the targets. Runs on a CPU in
minutes; nothing is read from outside the package."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from sda.config import Params, Section
from sda.domains.corruptions import write_shifted_domains
from sda.domains.registry import Domain, register_domain
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.shards import Sample, load_shards, write_shards
from sda.io.target_index import TargetIndex
from sda.layout import SourceClasses
from sda.runtime import derive_seed

__all__ = ["Embedded", "write_source", "write_targets"]


class Embedded(Section):
    """The built-in domain (profile ``embedded``): scikit-learn's digits rendered as RGB images."""

    image_size: int = Field(16, ge=8, le=64, description="Side of the RGB digits in pixels.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.3, gt=0, lt=0.6)
    max_shift: int = Field(1, ge=0, le=4, description="Random translation in pixels.")
    min_contrast: float = Field(0.35, ge=0, le=1, description="Min luminance gap fg/bg colours.")
    shard_maxcount: int = Field(1000, ge=1)


log = logging.getLogger("sda.source_data")


def write_source(params: Params, out: Path) -> dict[str, int]:
    """Render, split and shard the digits into ``out/{train,val,test}`` + ``classes.json``; returns
    the sample count per split."""
    from sda.domains.digits import CLASS_NAMES, render_digits, split_digits  # scikit-learn: only here

    cfg, seed = params.embedded, params.runtime.seed
    s = derive_seed(seed, "source_data")
    images, labels = render_digits(cfg.image_size, cfg.max_shift, cfg.min_contrast, seed=s)
    splits = split_digits(images, labels, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                          seed=s % (2**31))
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
        atomic_write_json(SourceClasses.path(tmp), SourceClasses(list(CLASS_NAMES)).as_dict())
    return counts


def write_targets(params: Params, source_dir: Path, out: Path) -> list[str]:
    """``target_data.split`` of the source, ``clean`` (first, when included) and corrupted; returns
    the domain names written."""
    cfg, seed = params.target_data, params.runtime.seed
    split = load_shards(source_dir / cfg.split)
    domains = (["clean"] if cfg.include_clean else []) + list(cfg.corruptions)
    with atomic_dir(out) as tmp:
        write_shifted_domains(split, tmp, domains, severity=cfg.severity, seed=seed, maxcount=cfg.shard_maxcount,
                              meta={"severity": cfg.severity, "split": cfg.split, "seed": seed})
        TargetIndex(domains=tuple(domains), corruptions=tuple(cfg.corruptions), in_mean=tuple(cfg.corruptions),
                    split=cfg.split, severity=cfg.severity).write(tmp)
    logging.getLogger("sda.target_data").info("%d domains x %d images from the %s split", len(domains),
                                              len(split.keys), cfg.split)
    return domains


register_domain(Domain(
    name="embedded",
    description="the built-in digits and their corruptions (CPU, minutes)",
    sections=("embedded",),
    params_model=Embedded,
    image_size=lambda p: p.embedded.image_size,
    write_source=write_source,
    write_targets=write_targets,
    severities=lambda p: [p.target_data.severity],
))
