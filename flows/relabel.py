"""Label new target images as they arrive, with the models the pipeline produced (SDA).

Reads the inbox (``relabel.inbox`` in params.yaml, or ``--inbox``), quarantines bad files, projects
and predicts the good ones in batches, and appends the labels to the Parquet dataset ``data/labels/``
(partitioned by date). Every image is labelled exactly once, whatever is killed when; two runs at
once are serialised by a lock. See :mod:`sda.relabel` for the guarantees.

    python -m flows.relabel --inbox incoming/      # the same job without Prefect (no server needed)
    prefect deployment run relabel/on-demand       # through the Prefect server (make serve)

The Prefect flow runs one task per batch and publishes a markdown artifact per batch (counts, label
distribution, quarantine reasons, originals vs projections by predicted class) and one per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from tqdm.auto import tqdm

from sda import __version__
from sda.params import Params, ParamsError
from sda.relabel import BatchReport, Lineage, RelabelJob
from sda.runtime import pick_device, set_deterministic, set_threads
from sda.sharded import fingerprint
from tasks.common import load_params

ROOT = Path(__file__).resolve().parents[1]
MODEL_STAGES = {"source": "source_model", "aligned": "classifier_align", "diffusion": "diffusion_finetune"}

log = logging.getLogger("sda.relabel")


class ModelsMissing(FileNotFoundError):
    """The pipeline has not produced the models (or dvc.lock) that relabelling needs."""


def dvc_model_hashes(root: Path) -> dict[str, str]:
    """The DVC hash (md5 of the ``.dir`` listing) of each model output, from ``dvc.lock``."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        raise ModelsMissing(f"{lock} is missing: run the pipeline first (make run, or dvc repro)")
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    out = {}
    for role, stage in MODEL_STAGES.items():
        outs = stages.get(stage, {}).get("outs") or []
        if not outs:
            raise ModelsMissing(f"{lock} has no output for stage {stage}: run `dvc repro {stage}` first")
        out[role] = outs[0]["md5"]
    return out


def code_version(root: Path) -> str:
    """``git describe --always --dirty`` of the checkout, else the package version."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return f"{__version__}+g{r.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return __version__


def make_job(root: Path, params: Params, *, inbox: str | None = None, overrides: dict[str, Any] | None = None,
             flow_run_id: str | None = None) -> RelabelJob:
    """A :class:`RelabelJob` for the checkout at ``root`` (paths in params are relative to it)."""
    settings = params.relabel.model_copy(update=overrides or {})
    resolved = {k: str((root / getattr(settings, k)).resolve()) for k in ("inbox", "labels", "quarantine")}
    if inbox:
        resolved["inbox"] = str(Path(inbox).resolve())
    settings = settings.model_copy(update=resolved)
    data = root / "data"
    models = {"source": data / "source_model", "aligned": data / "classifier_align",
              "diffusion": data / "diffusion_finetune", "classes": data / "source_data" / "classes.json"}
    for name, path in models.items():
        if not path.exists():
            raise ModelsMissing(f"{path} is missing ({name} model): run the pipeline first (make run, or dvc repro)")
    hashes = dvc_model_hashes(root)
    lineage = Lineage(source_model_hash=hashes["source"], aligned_model_hash=hashes["aligned"],
                      diffusion_model_hash=hashes["diffusion"],
                      params_hash=fingerprint(params.model_dump(mode="json"))[:16], code_version=code_version(root))
    return RelabelJob(settings, projection=params.projection.model_dump(), image_size=params.image_size,
                      models=models, lineage=lineage, seed=params.runtime.seed, run_id=uuid.uuid4().hex,
                      flow_run_id=flow_run_id, device=pick_device(params.runtime.device))


def run_summary(job: RelabelJob, reports: list[BatchReport], seconds: float) -> dict[str, Any]:
    sc = job.scan
    labelled = sum(r.labelled for r in reports)
    return {
        "labelled": labelled,
        "quarantined": sum(r.quarantined for r in reports) + (len(sc.broken) if sc else 0),
        "batches": len(reports),
        "already_done": len(sc.known) if sc else 0,
        "duplicates": sc.duplicates if sc else 0,
        "too_new": len(sc.too_new) if sc else 0,
        "ignored": len(sc.ignored) if sc else 0,
        "symlinks": len(sc.symlinks) if sc else 0,  # quarantined (counted above), not followed
        "seconds": round(seconds, 2),
        "images_per_second": round(labelled / seconds, 2) if seconds > 0 else 0.0,
        "labels": str(job.labels_dir),
        "run_id": job.run_id,
    }


def run_job(job: RelabelJob, process: Callable[[RelabelJob, list, int], BatchReport]) -> dict[str, Any]:
    """Lock, scan and process every batch with ``process`` (a Prefect task or a plain call)."""
    t0 = time.perf_counter()
    with job:
        reports = [process(job, batch, i) for i, batch in enumerate(job.batches)]
    return run_summary(job, reports, time.perf_counter() - t0)


# -- Prefect ------------------------------------------------------------------------------------
@task(name="relabel-batch", task_run_name="batch-{index}", cache_policy=NONE)
def label_batch(job: RelabelJob, batch: list, index: int) -> BatchReport:
    """One batch: validate, quarantine, project, predict, commit; its report becomes an artifact."""
    report = job.process(batch)
    get_run_logger().info("batch %d (%s): %d labelled, %d quarantined, %.1f images/s", index, report.batch_id,
                          report.labelled, report.quarantined, report.images_per_second)
    create_markdown_artifact(key="relabel-batch", markdown=report.markdown(),
                             description=f"relabel batch {report.batch_id}")
    return report


@flow(name="relabel", log_prints=True)
def relabel(inbox: str | None = None, batch_size: int | None = None, root: str = str(ROOT),
            wait_for_models: bool = False) -> dict[str, Any]:
    """Label the new images of the inbox (default: params.yaml's relabel.inbox) exactly once.

    ``wait_for_models`` (the scheduled deployment): before the pipeline has produced its models,
    log that and finish without labelling instead of failing.
    """
    root_p = Path(root).resolve()
    params = load_params(root_p / "params.yaml")
    set_threads(params.runtime.threads)
    set_deterministic(params.runtime.deterministic)
    try:
        job = make_job(root_p, params, inbox=inbox, flow_run_id=str(flow_run.id),
                       overrides={"batch_size": batch_size} if batch_size else None)
    except ModelsMissing as err:
        if not wait_for_models:
            raise
        get_run_logger().warning("nothing labelled: %s", err)
        return {"labelled": 0, "waiting_for_models": True}
    summary = run_job(job, label_batch)
    print(json.dumps(summary, indent=2))
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    create_markdown_artifact(key="relabel-run", markdown=f"# Relabel run\n\n| | |\n|---|---|\n{rows}\n",
                             description="relabel run summary")
    return summary


# -- CLI ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.relabel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inbox", help="folder of new images (default: relabel.inbox)")
    parser.add_argument("--root", default=str(ROOT), help="repository root whose data/ holds the models")
    parser.add_argument("--labels", help="label dataset folder (default: relabel.labels)")
    parser.add_argument("--quarantine", help="quarantine folder (default: relabel.quarantine)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: relabel.batch_size)")
    parser.add_argument("--min-age", type=float, help="skip files modified less than this many seconds ago")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    root = Path(args.root).resolve()
    overrides = {k: v for k, v in {"labels": args.labels, "quarantine": args.quarantine,
                                   "batch_size": args.batch_size, "min_age_seconds": args.min_age}.items()
                 if v is not None}
    try:
        params = load_params(root / "params.yaml")
        set_threads(params.runtime.threads)
        set_deterministic(params.runtime.deterministic)
        job = make_job(root, params, inbox=args.inbox, overrides=overrides)

        def process(job: RelabelJob, batch: list, index: int) -> BatchReport:
            if index == 0:  # the total is known once the scan ran (under the lock)
                bar.reset(total=sum(len(b) for b in job.batches))
            report = job.process(batch)
            bar.update(len(batch))
            bar.set_postfix(batch=report.batch_id, img_s=f"{report.images_per_second:.1f}", refresh=False)
            return report

        with tqdm(total=0, unit="img", desc="relabel", disable=None) as bar:
            summary = run_job(job, process)
    except (ParamsError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
