"""Stage evaluate: top-1 per target domain for Source, DDA, DDA's ensembles and SDA.

Writes ``metrics/evaluate.json`` (``{"domains": {d: {source, dda, dda_ens, sda}}, "mean": {...},
"more": {...}}``, percent), ``metrics/per_domain.csv`` (a DVC plot), ``metrics/results.md`` and
``metrics/projection_grid.png`` (originals vs projections, per domain), ``metrics/predictions.csv``
(SDA's label for every image of the unlabelled domains: a flat target folder) and the confusion of
Source and SDA per labelled domain (``metrics/confusion.png``, ``metrics/confusion/<method>/<domain>.csv``).
The projection's cost per image, counted by ``target_project`` (its ``compute.json``), goes into
``evaluate.json`` (``compute``) and the table. ``classifier_align``'s
checks of the synthetic domain (``metrics/alignment.json``) and their warnings are carried into
``evaluate.json`` (``alignment``, ``warnings``) and the table. Per labelled domain, SDA is compared with
Source and with DDA on the same images (``paired``: the images each gets right that the other does not,
the difference's 95 % interval and McNemar's p; :func:`sda.method.scoring.paired_comparison`), so a
lead of a few images on a small target is not read as a gain. With ``evaluate.source_collapse_share``
SDA drops its source term on the domains where the source model's predictions collapsed
(``sda_source_term``: each domain's top-class share and whether it was dropped). Originals and projections
are streamed side by side by key (:class:`sda.io.streaming.ShardStream`, ``runtime.loader_workers``
reading processes): memory holds a batch and the predictions, not a domain.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from sda.config import Params
from sda.domains import Domain, domain_for
from sda.io.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
from sda.io.shards import iter_samples
from sda.io.target_index import TargetIndex
from sda.provenance import code_version, params_hash
from sda.layout import DATA, METRICS, METRIC_FILES, PROJECTION_COMPUTE, SourceClasses
from tasks.common import stage_main

if TYPE_CHECKING:
    from sda.method.scoring import DomainScore

log = logging.getLogger("sda.evaluate")


def protocol(params: Params, domain: Domain, images_per_domain: int) -> dict:
    """What the numbers were measured under, so two results can be compared or told apart."""
    td = params.target_data
    return {"profile": params.profile, "split": td.split, "images_per_domain": images_per_domain,
            "seed": params.runtime.seed, "threads": params.runtime.threads,
            "severities": domain.severities(params),
            "params_sha256": params_hash(params), "code_version": code_version()}


def run(params: Params, domain: Domain, device, data: Path = DATA, metrics_dir: Path = METRICS) -> dict:
    from sda.io.streaming import ShardStream
    from sda.method.report import grid_png, results_markdown, write_plot_csv
    from sda.method.scoring import score_domain, summarise
    from sda.models.classifiers import load_classifier

    index = TargetIndex.read(data / "target_data")
    source = load_classifier(data / "source_model", device)
    aligned = load_classifier(data / "classifier_align", device)
    unlabelled = set(index.unlabelled or ())
    class_names = SourceClasses.in_folder(data / "source_data").names
    bs = params.evaluate.batch_size
    per_domain, grid_rows, predicted, confusion, source_term, n = {}, {}, {}, {}, {}, 0
    for d in index.domains:
        # originals and projections side by side, streamed: memory is a batch, not a domain
        stream = ShardStream(data / "target_data" / d, bs, workers=params.runtime.loader_workers,
                             paired_dir=data / "target_project" / d)
        score = score_domain(source, aligned, stream, batch_size=bs, grid_images=params.evaluate.grid_images,
                             device=device, collapse_share=params.evaluate.source_collapse_share,
                             collapse_min_images=params.evaluate.source_collapse_min_images)
        grid_rows[d] = score.grid
        source_term[d] = {"top_class_share": score.source_share, "dropped": score.source_dropped}
        if d in unlabelled:
            predicted[d] = score
        else:
            per_domain[d] = score.accuracy
            confusion[d] = score
            n = stream.count
    metrics = summarise(per_domain, list(index.in_mean))
    # SDA's source term per domain: the source model's top-class share on the originals, whether it was dropped
    metrics["sda_source_term"] = {"collapse_share": params.evaluate.source_collapse_share, "domains": source_term}
    metrics["paired"] = {"domains": {d: sc.compared() for d, sc in confusion.items()},
                         "corruptions": [d for d in index.generated if d in confusion]}
    if predicted:
        metrics["unlabelled"] = {d: {"images": len(sc.keys), "sda_counts": dict(Counter(class_names[i] for i in sc.sda))}
                                 for d, sc in predicted.items()}
    alignment = metrics_dir / METRIC_FILES["alignment"].name  # classifier_align's checks of the synthetic domain
    if alignment.is_file():
        metrics["alignment"] = json.loads(alignment.read_text())
        metrics["warnings"] = metrics["alignment"].get("warnings", [])
    compute = data / "target_project" / PROJECTION_COMPUTE  # the projection's work, counted by target_project
    if compute.is_file():
        metrics["compute"] = compute_per_method(json.loads(compute.read_text()))
    metrics["split"] = params.target_data.split
    metrics["images_per_domain"] = n
    metrics["protocol"] = protocol(params, domain, images_per_domain=n)
    table = results_markdown(metrics)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / METRIC_FILES["evaluate"].name, metrics)
    write_plot_csv(metrics, metrics_dir / METRIC_FILES["per_domain"].name)
    atomic_write_bytes(metrics_dir / METRIC_FILES["results"].name, (table + "\n").encode())
    atomic_write_bytes(metrics_dir / METRIC_FILES["grid"].name, grid_png(grid_rows, domain.image_size(params)))
    write_predictions(data / "target_data", predicted, class_names, metrics_dir / METRIC_FILES["predictions"].name)
    write_confusion(confusion, class_names, metrics_dir)
    log.info("results (top-1 %%, %s split):\n%s", params.target_data.split, table)
    for w in metrics.get("warnings", []):
        log.warning("%s", w)
    return metrics


def compute_per_method(projection: dict) -> dict:
    """Each method's test-time cost per image in UNet forward-equivalents (a forward 1, an input-gradient
    backward 2; the classifiers' passes are left out, tiny beside the UNet's): the source model needs no
    projection, every other method one per image (SDA: the same as DDA; its one-off cost, the synthetic
    set and its re-projection, is not per target image)."""
    from sda.method.scoring import MAIN_METHODS

    per_image = projection["forward_equivalents_per_image"]
    return {"unet_forward_equivalents_per_image": {m: (0.0 if m == "source" else per_image) for m in MAIN_METHODS},
            "projection": projection}


def write_confusion(scores: dict[str, DomainScore], class_names: list[str], metrics_dir: Path,
                    methods: tuple[str, ...] = ("source", "sda")) -> None:
    """Which classes Source and SDA confuse, per labelled domain: ``confusion/<method>/<domain>.csv``
    (``actual,predicted`` class names, one row per image: DVC's confusion plots) and ``confusion.png``
    (the row-normalised matrices side by side, one row per domain)."""
    from sda.method.report import confusion_matrix, confusion_png

    with atomic_dir(metrics_dir / METRIC_FILES["confusion_rows"].name) as tmp:
        for m in methods:
            (tmp / m).mkdir()
            for d, score in scores.items():
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                w.writerow(["actual", "predicted"])
                w.writerows((class_names[a], class_names[p]) for a, p in zip(score.labels.tolist(),
                                                                            getattr(score, m).tolist()))
                (tmp / m / f"{d}.csv").write_bytes(buf.getvalue().encode())
    matrices = {d: {m: confusion_matrix(s.labels, getattr(s, m), len(class_names)) for m in methods}
                for d, s in scores.items()}
    atomic_write_bytes(metrics_dir / METRIC_FILES["confusion"].name, confusion_png(matrices))


def write_predictions(target_dir: Path, predicted: dict[str, DomainScore], class_names: list[str], path: Path) -> None:
    """``path``: the SDA label of every image of the unlabelled domains, ``domain,key,file,label,class_name``
    (the file as the domain recorded it; the header alone when there is no unlabelled domain)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["domain", "key", "file", "label", "class_name"])
    for d, score in predicted.items():
        files = {s.key: s.meta.get("file", "") for s in iter_samples(target_dir / d)}
        for key, label in zip(score.keys, score.sda.tolist()):
            w.writerow([d, key, files.get(key, ""), label, class_names[label]])
    atomic_write_bytes(path, buf.getvalue().encode())


def _main(params: Params, args: argparse.Namespace, domain: Domain) -> int:
    metrics = run(params, domain, args.device)
    return metrics["images_per_domain"] * len(metrics["domains"])  # each read twice (original, projected)


if __name__ == "__main__":
    stage_main("evaluate", __doc__, _main, domain_for=domain_for)
