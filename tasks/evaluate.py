"""Stage evaluate: top-1 per target domain for Source, DDA, DDA's ensembles and SDA.

Writes ``metrics/evaluate.json`` (``{"domains": {d: {source, dda, dda_ens, sda}}, "mean": {...},
"more": {...}}``, percent), ``metrics/per_domain.csv`` (a DVC plot), ``metrics/results.md`` and
``metrics/projection_grid.png`` (originals vs projections, per domain). Originals and projections
are streamed side by side by key (:class:`sda.io.streaming.ShardStream`, ``runtime.loader_workers``
reading processes): memory holds a batch and the predictions, not a domain.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sda.config import Params
from sda.io.atomic import atomic_write_bytes, atomic_write_json
from sda.io.streaming import ShardStream
from sda.method.report import grid_png, results_markdown, write_plot_csv
from sda.method.scoring import score_domain, summarise
from sda.models.classifiers import load_classifier
from sda.provenance import code_version, params_hash
from tasks.common import DATA, METRICS, stage_main

log = logging.getLogger("sda.evaluate")


def protocol(params: Params, images_per_domain: int) -> dict:
    """What the numbers were measured under, so two results can be compared or told apart."""
    td = params.target_data
    return {"profile": params.profile, "split": td.split, "images_per_domain": images_per_domain,
            "seed": params.runtime.seed, "threads": params.runtime.threads,
            "severities": list(params.imagenet.severities) if params.profile == "imagenet" else [td.severity],
            "params_sha256": params_hash(params), "code_version": code_version()}


def run(params: Params, device, data: Path = DATA, metrics_dir: Path = METRICS) -> dict:
    index = json.loads((data / "target_data" / "domains.json").read_text())
    domains = index["domains"]
    source, src_cfg = load_classifier(data / "source_model", device)
    aligned, al_cfg = load_classifier(data / "classifier_align", device)
    bs = params.evaluate.batch_size
    per_domain, grid_rows, n = {}, {}, 0
    for d in domains:
        # originals and projections side by side, streamed: memory is a batch, not a domain
        stream = ShardStream(data / "target_data" / d, bs, workers=params.runtime.loader_workers,
                             paired_dir=data / "target_project" / d)
        per_domain[d], grid_rows[d] = score_domain(source, src_cfg, aligned, al_cfg, stream, batch_size=bs,
                                                   grid_images=params.evaluate.grid_images, device=device)
        n = stream.count
    metrics = summarise(per_domain, index["corruption_domains"])
    metrics["split"] = params.target_data.split
    metrics["images_per_domain"] = n
    metrics["protocol"] = protocol(params, images_per_domain=n)
    table = results_markdown(metrics)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / "evaluate.json", metrics)
    write_plot_csv(metrics, metrics_dir / "per_domain.csv")
    atomic_write_bytes(metrics_dir / "results.md", (table + "\n").encode())
    atomic_write_bytes(metrics_dir / "projection_grid.png", grid_png(grid_rows, params.image_size))
    log.info("results (top-1 %%, %s split):\n%s", params.target_data.split, table)
    return metrics


def _main(params: Params, args: argparse.Namespace) -> int:
    metrics = run(params, args.device)
    return metrics["images_per_domain"] * len(metrics["domains"])  # each read twice (original, projected)


if __name__ == "__main__":
    stage_main("evaluate", __doc__, _main)
