"""Stage streams: every method on the target streams test-time adaptation meets (docs/streams.md).

Every registered method (sda.method.registry: input adaptation, the test-time-adaptation baselines of
sda.method.baselines, SDA's combinations), on the streams of ``streams.streams`` (i.i.d., continual, mixed, correlated, class-sorted, small batches),
over the labelled corruption domains of ``data/target_data`` with ``target_project``'s projections.

Writes ``metrics/streams.json`` (``{"streams": {stream: {method: {mean, domains, images_per_domain,
unet_forward_equivalents, classifier_forwards, classifier_backwards, ...}}}, "methods": {method: {worst_stream,
worst, best, spread, cost_per_image}}, "batch_coupling": {...}, "protocol": {...}}``, top-1 %),
``metrics/streams.md`` (the table) and ``metrics/streams.png`` (the heatmap).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sda.config import Params, ParamsError
from sda.io.atomic import atomic_write_bytes, atomic_write_json
from sda.io.target_index import TargetIndex
from sda.layout import DATA, METRICS, METRIC_FILES, PROJECTION_COMPUTE
from sda.runtime import derive_seed
from tasks.common import stage_main

log = logging.getLogger("sda.streams")

MAX_ID_FILE_BYTES = 16 << 20


def read_image_ids(path: str | Path) -> set[str]:
    """The keys listed in an image-id file (one path or name per line; the key is its stem), e.g.
    RobustBench's ``helper_files/imagenet_test_image_ids.txt``."""
    p = Path(path)
    if not p.is_file() or p.is_symlink():
        raise FileNotFoundError(f"streams.image_ids: {p} is not a regular file (RobustBench ships it as "
                                "helper_files/imagenet_test_image_ids.txt; or set image_ids: null)")
    with p.open("rb") as f:
        text = f.read(MAX_ID_FILE_BYTES + 1)
    if len(text) > MAX_ID_FILE_BYTES:
        raise ValueError(f"streams.image_ids: {p} is over {MAX_ID_FILE_BYTES} bytes: not an id list")
    ids = {Path(line.strip()).stem for line in text.decode("utf-8", "replace").splitlines() if line.strip()}
    if not ids:
        raise ValueError(f"streams.image_ids: {p} lists no image")
    return ids


def run(params: Params, device, data: Path = DATA, metrics_dir: Path = METRICS) -> dict:
    from sda.method.projector import project_uint8
    from sda.method.catalog import read_source_split, resolve_methods
    from sda.method.scoring import fell_back
    from sda.method.stream_eval import batch_coupling, compare_streams, load_target_set, summarise_methods
    from sda.method.streams_report import streams_heatmap_png, streams_markdown
    from sda.models.classifiers import load_classifier
    from sda.models.diffusion import load_diffusion

    cfg, seed = params.streams, derive_seed(params.runtime.seed, "streams")
    domains = TargetIndex.read(data / "target_data").labelled_in_mean
    if not domains:
        raise ValueError("streams: no labelled corruption domain in data/target_data (the streams compare accuracy)")
    ids = read_image_ids(cfg.image_ids) if cfg.image_ids else None
    ts = load_target_set(data / "target_data", data / "target_project", domains, seed=seed,
                         images_per_domain=cfg.images_per_domain, ids=ids)
    log.info("%d domains, %d images (%s per domain)", len(ts.sizes), len(ts.labels), sorted(set(ts.sizes.values())))
    source = load_classifier(data / "source_model", device)
    aligned = load_classifier(data / "classifier_align", device)
    compute = json.loads((data / "target_project" / PROJECTION_COMPUTE).read_text())
    diffusion = None
    if any(m.needs_diffusion for m in resolve_methods(cfg)) or cfg.coupling_images:
        unet, sched, info = load_diffusion(data / "diffusion_finetune", device)
        diffusion = (unet, sched, info.null_label, params.projection.respacing)
    metrics = compare_streams(ts, source, aligned, cfg, seed=seed, device=device, fallback=fell_back(aligned.config),
                              projection_fe=float(compute["forward_equivalents_per_image"]), diffusion=diffusion,
                              source_split=read_source_split(data / "source_data"))
    metrics["methods"] = summarise_methods(metrics["streams"])
    if cfg.coupling_images and params.projection.method == "dda":  # the diffusion model is the projector
        def projector(images, projection, generators):
            return project_uint8(unet, sched, images, projection, null_label=info.null_label, generator=generators)

        metrics["batch_coupling"] = batch_coupling(ts, projector, params.projection, source, aligned, device,
                                                   images=cfg.coupling_images, seed=seed)
    metrics["protocol"] = {"seed": params.runtime.seed, "domains": list(ts.sizes), "images": int(len(ts.labels)),
                           "projection": {"method": params.projection.method, "per_sample_norm": params.projection.per_sample_norm,
                                          "forward_equivalents_per_image": compute["forward_equivalents_per_image"]},
                           "evaluate_source_collapse_share": params.evaluate.source_collapse_share,
                           **cfg.model_dump(mode="json")}
    table = streams_markdown(metrics)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / METRIC_FILES["streams"].name, metrics)
    atomic_write_bytes(metrics_dir / METRIC_FILES["streams_table"].name, (table + "\n").encode())
    atomic_write_bytes(metrics_dir / METRIC_FILES["streams_heatmap"].name, streams_heatmap_png(metrics))
    log.info("methods x streams (top-1 %%, mean of %d domains):\n%s", len(ts.sizes), table)
    return metrics


def check_methods(params: Params) -> list:
    """The methods ``streams.methods`` names, each with its params section validated (a ParamsError
    naming ``streams.<section>.<key>`` before any work)."""
    from sda.method.catalog import resolve_methods

    try:
        methods = resolve_methods(params.streams)
    except ValueError as err:
        raise ParamsError(str(err)) from None
    sections = {m.section_name for m in resolve_methods(type(params.streams)(methods="all")) if m.section_name}
    unknown = sorted(set(params.streams.model_extra or {}) - sections)
    if unknown:
        raise ParamsError(f"params.yaml: streams.{unknown[0]}: unknown parameter (no registered method declares this "
                          f"section; the methods' sections: {', '.join(sorted(sections))})")
    for m in methods:
        if m.section_name:
            params.streams.method_params(m.section_name)
    return methods


def _main(params: Params, args: argparse.Namespace, methods: list) -> int:
    metrics = run(params, args.device)
    return metrics["protocol"]["images"]


if __name__ == "__main__":
    stage_main("streams", __doc__, _main, domain_for=check_methods)
