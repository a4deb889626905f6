"""A relabel job for a checkout of the pipeline: the models its stages produced (``sda.layout``) and
the run over every batch, without any orchestrator (``flows/relabel.py`` adds Prefect tasks and
artifacts, the CLI a progress bar; ``bench/relabel.py`` calls it directly)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sda.config import Params
from sda.io.shards import iter_samples
from sda.io.target_index import INDEX, TargetIndex
from sda.layout import OUTS
from sda.relabel.job import Lineage, RelabelJob
from sda.relabel.predict import models_read
from sda.relabel.report import BatchReport
from sda.runtime import pick_device

__all__ = ["ModelsMissing", "make_job", "stored_image_size", "run_job", "run_summary"]



class ModelsMissing(FileNotFoundError):
    """The pipeline has not produced the models (or the record of its run) that relabelling needs."""


def stored_image_size(root: Path) -> int:
    """The side in pixels of the target images the pipeline stored, projected and evaluated (the first
    image of its first target domain): what new images are cropped to, taken from the artifacts
    rather than from today's params."""
    targets = root / OUTS["target_data"]
    if not (targets / INDEX).is_file():
        raise ModelsMissing(f"{targets / INDEX} is missing: run the pipeline first (make run, or dvc repro)")
    first = TargetIndex.read(targets).domains[0]
    return int(next(iter_samples(targets / first)).image.shape[0])


def make_job(root: Path, params: Params, lineage: Lineage, *, inbox: str | None = None,
             overrides: dict[str, Any] | None = None, flow_run_id: str | None = None,
             computed_reference: Path | None = None) -> RelabelJob:
    """A :class:`RelabelJob` for the checkout at ``root`` (paths in params are relative to it) with the
    models of its pipeline run, whose ``lineage`` (what that run recorded: ``flows.relabel.model_lineage``)
    goes into every row; ``overrides`` replace fields of ``params.relabel``; ``computed_reference``: the
    pipeline's ``monitor_reference`` out, made from these models (read instead of computed). Raises
    :class:`ModelsMissing` before the pipeline has run."""
    settings = params.relabel.model_copy(update=overrides or {})
    resolved = {k: str((root / getattr(settings, k)).resolve()) for k in ("inbox", "labels", "quarantine")}
    if inbox:
        resolved["inbox"] = str(Path(inbox).resolve())
    settings = settings.model_copy(update=resolved)
    models = models_read(root, params)
    for name, path in models.items():
        if not path.exists():
            raise ModelsMissing(f"{path} is missing ({name} model): run the pipeline first (make run, or dvc repro)")
    return RelabelJob(settings, projection=params.projection, image_size=stored_image_size(root),
                      models=models, lineage=lineage, seed=params.runtime.seed, run_id=uuid.uuid4().hex,
                      flow_run_id=flow_run_id, device=pick_device(params.runtime.device), guard=params.streams.guard,
                      reference_dir=root / OUTS["target_data"], computed_reference=computed_reference)


def run_summary(job: RelabelJob, reports: list[BatchReport], seconds: float) -> dict[str, Any]:
    """The run's counts (labelled, quarantined, skipped by kind), time and images/s."""
    sc = job.scan
    labelled = sum(r.labelled for r in reports)
    run_monitor = None
    if job.run_predictions:  # the run's images together (a run of one batch: that batch's row)
        labels, confidences, features = (np.concatenate(a) for a in zip(*job.run_predictions))
        run_monitor = job.monitor_row(labels, confidences, features, job.run_id)
        if run_monitor is not None:
            run_monitor["batches_drifted"] = sum(bool(r.monitor and r.monitor["drift"]) for r in reports)
    return {
        "labelled": labelled,
        "quarantined": sum(r.quarantined for r in reports) + (len(sc.broken) if sc else 0),
        "batches": len(reports),
        "already_done": len(sc.known) if sc else 0,
        "duplicates": sc.duplicates if sc else 0,
        "too_new": len(sc.too_new) if sc else 0,
        "ignored": len(sc.ignored) if sc else 0,
        "symlinks": len(sc.symlinks) if sc else 0,  # quarantined (counted above), not followed
        "deferred": sum(r.deferred for r in reports),  # truncated but recent: maybe a stalled upload
        "folders_not_listed": [f"{f or '.'}: {why}" for f, why in sc.unlisted] if sc else [],
        "part_files_set_aside": job.set_aside,  # unreadable part files moved to <store>/_corrupt/
        "seconds": round(seconds, 2),
        "images_per_second": round(labelled / seconds, 2) if seconds > 0 else 0.0,
        "adapt": job.settings.adapt,  # sda+bn: how many labels came from the adapted classifiers
        "adapted": job.predictor.adapted if job.predictor else 0,
        "labels": str(job.labels_dir),
        "run_id": job.run_id,
        "monitor": run_monitor,  # sda.relabel.monitor: estimates and drift tests, no label used (None: nothing labelled)
    }


def run_job(job: RelabelJob, process: Callable[[RelabelJob, list, int], BatchReport]) -> dict[str, Any]:
    """Lock, scan and process every batch with ``process`` (a Prefect task or a plain call)."""
    t0 = time.perf_counter()
    with job:
        reports = [process(job, batch, i) for i, batch in enumerate(job.batches)]
    return run_summary(job, reports, time.perf_counter() - t0)
