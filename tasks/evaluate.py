"""Stage evaluate: top-1 per target domain for Source, DDA, DDA's ensembles and SDA.

Writes ``metrics/evaluate.json`` (``{"domains": {d: {source, dda, dda_ens, sda}}, "mean": {...},
"more": {...}}``, percent), ``metrics/per_domain.csv`` (a DVC plot), ``metrics/results.md`` and
``metrics/projection_grid.png`` (originals vs projections, per domain). Originals and projections
are streamed side by side by key (:class:`sda.streaming.ShardStream`, ``runtime.loader_workers``
reading processes): memory holds a batch and the predictions, not a domain.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np

from sda.classifiers import input_spec, load_classifier, predict_logits
from sda.evaluate import method_predictions, projection_grid, results_markdown, summarise, write_plot_csv
from sda.params import Params
from sda.shards import atomic_write_bytes, atomic_write_json
from sda.streaming import ShardStream
from tasks.common import DATA, METRICS, code_version, params_hash, stage_main

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
    bs, k = params.evaluate.batch_size, params.evaluate.grid_images
    src_in, al_in = input_spec(src_cfg), input_spec(al_cfg)
    per_domain, grid_rows, n = {}, {}, 0
    for d in domains:
        # originals and projections side by side, streamed: memory is a batch, not a domain
        stream = ShardStream(data / "target_data" / d, bs, workers=params.runtime.loader_workers,
                             paired_dir=data / "target_project" / d)
        preds: dict[str, list[np.ndarray]] = {}
        labels, grid_o, grid_p = [], [], []
        for b in stream:
            so = predict_logits(source, b.images, **src_in, batch_size=bs, device=device)
            sp = predict_logits(source, b.paired, **src_in, batch_size=bs, device=device)
            ap = predict_logits(aligned, b.paired, **al_in, batch_size=bs, device=device)
            for m, p in method_predictions(so, sp, ap).items():
                preds.setdefault(m, []).append(p.numpy())
            labels.append(b.labels)
            if sum(map(len, grid_o)) < k:  # the first batch comes from the first shard: same images every run
                grid_o.append(b.images[:k])
                grid_p.append(b.paired[:k])
        y = np.concatenate(labels)
        per_domain[d] = {m: round(float((np.concatenate(p) == y).mean() * 100), 2) for m, p in preds.items()}
        grid_rows[d] = (np.concatenate(grid_o)[:k], np.concatenate(grid_p)[:k])
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
    buf = io.BytesIO()
    projection_grid(grid_rows, upscale=max(1, 64 // params.image_size)).save(buf, format="PNG")
    atomic_write_bytes(metrics_dir / "projection_grid.png", buf.getvalue())
    log.info("results (top-1 %%, %s split):\n%s", params.target_data.split, table)
    return metrics


def _main(params: Params, args: argparse.Namespace) -> int:
    metrics = run(params, args.device)
    return metrics["images_per_domain"] * len(metrics["domains"])  # each read twice (original, projected)


if __name__ == "__main__":
    stage_main("evaluate", __doc__, _main)
