"""Label new target images as they arrive, with the models the pipeline produced (SDA).

Reads the inbox (``relabel.inbox`` in params.yaml, or ``--inbox``), quarantines bad files, projects
and predicts the good ones in batches, and appends the labels to the Parquet dataset ``data/labels/``
(partitioned by date). Every image is labelled exactly once, whatever is killed when; two runs at
once are serialised by a lock. See :mod:`sda.relabel.job` for the guarantees.

    python -m flows.relabel --inbox incoming/      # the same job without Prefect (no server needed)
    python -m flows.relabel status                 # the last runs: images, estimated accuracy, drift (sda relabel status)
    prefect deployment run relabel/on-demand       # through the Prefect server (make serve)

The Prefect flow runs one task per batch and publishes a markdown artifact per batch (counts, label
distribution, quarantine reasons, originals vs projections by predicted class) and one per run (with
the picture of the last runs' monitor). A drifted batch emits the event ``sda.relabel.drift``; under
``make serve`` an automation answers it with a run of ``relabel/drift-alert`` (:func:`drift_alert`: the
alert artifact) and, with ``relabel.monitor.pause_on_drift``, by pausing ``relabel/scheduled``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event
from prefect.runtime import deployment, flow_run
from tqdm.auto import tqdm

from flows.served import check_served_inbox, check_served_root
import yaml

from sda.config import ParamsError, load_params
from sda.layout import METRIC_FILES, MODEL_STAGES, MODELS
from sda.relabel.job import Lineage, RelabelJob
from sda.relabel.monitor import history
from sda.relabel.report import BatchReport, drift_alert_markdown, find_grid, history_png
from sda.relabel.service import ModelsMissing, make_job, run_job
from sda.runtime import set_deterministic, set_threads

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("sda.relabel")


def model_lineage(root: Path) -> Lineage:
    """What produced the models relabelling loads, as that pipeline run recorded it: the DVC hash of
    each model out (``dvc.lock``) and the params hash and code version its ``evaluate`` stage wrote
    (``metrics/evaluate.json``, ``protocol``), not today's params or checkout. Raises
    :class:`ModelsMissing` before the pipeline has run to its end."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        raise ModelsMissing(f"{lock} is missing: run the pipeline first (make run, or dvc repro)")
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for role, stage in MODEL_STAGES.items():
        outs = stages.get(stage, {}).get("outs") or []
        if not outs:
            raise ModelsMissing(f"{lock} has no output for stage {stage}: run `dvc repro {stage}` first")
        hashes[role] = outs[0]["md5"]
    metrics = root / METRIC_FILES["evaluate"]
    if not metrics.is_file():
        raise ModelsMissing(f"{metrics} is missing: run the pipeline to its end first (make run, or dvc repro)")
    # the record is of these models only if evaluate ran on them (dvc.lock is written stage by stage)
    evaluated = {d["path"]: d.get("md5") for d in stages.get("evaluate", {}).get("deps") or []}
    for role in ("source", "aligned"):
        if evaluated.get(str(MODELS[role])) != hashes[role]:
            raise ModelsMissing(f"{MODELS[role]} changed since evaluate last ran: run the pipeline to its end "
                                "first (make run, or dvc repro)")
    protocol = json.loads(metrics.read_text()).get("protocol") or {}
    return Lineage(source_model_hash=hashes["source"], aligned_model_hash=hashes["aligned"],
                   diffusion_model_hash=hashes["diffusion"],
                   params_hash=str(protocol.get("params_sha256", "unrecorded"))[:16],
                   code_version=str(protocol.get("code_version", "unrecorded")))


# -- Prefect ------------------------------------------------------------------------------------
DRIFT_EVENT = "sda.relabel.drift"


def checkout_resource(root: Path) -> str:
    """The Prefect resource id of the checkout at ``root`` (its drift events name it, its automation matches it)."""
    return f"sda.checkout.{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}"


def emit_drift(root: Path, job: RelabelJob, report: BatchReport) -> None:
    """The event ``sda.relabel.drift`` of a drifted batch: resource = this checkout, related = the deployment
    and flow run (when there are), payload = the batch's monitor row, its id, the inbox and the reference's
    label shares."""
    payload = {**report.monitor, "batch_id": report.batch_id, "checkout": str(root), "inbox": str(job.inbox),
               "reference_label_shares": job.reference.label_shares(job.predictor.class_names)}
    related = [{"prefect.resource.id": f"prefect.{kind}.{rid}", "prefect.resource.role": kind}
               for kind, rid in (("deployment", deployment.id), ("flow-run", flow_run.id)) if rid]
    emit_event(DRIFT_EVENT, resource={"prefect.resource.id": checkout_resource(root),
                                      "prefect.resource.name": root.name, "sda.checkout": str(root)},
               related=related, payload=payload)
    get_run_logger().warning("batch %s drifted (%s; estimated accuracy %.1f %%, reference %.1f %%): event %s emitted",
                             report.batch_id, ", ".join(report.monitor.get("fired") or []) or "?",
                             report.monitor["estimated_accuracy"], report.monitor["reference_accuracy"], DRIFT_EVENT)


@task(name="relabel-batch", task_run_name="batch-{index}", cache_policy=NONE)
def label_batch(job: RelabelJob, batch: list, index: int, root: Path = ROOT) -> BatchReport:
    """One batch: validate, quarantine, project, predict, commit; its report becomes an artifact, its
    drift (relabel.monitor) an event."""
    report = job.process(batch)
    get_run_logger().info("batch %d (%s): %d labelled, %d quarantined, %.1f images/s", index, report.batch_id,
                          report.labelled, report.quarantined, report.images_per_second)
    create_markdown_artifact(key="relabel-batch", markdown=report.markdown(),
                             description=f"relabel batch {report.batch_id}")
    if report.monitor and report.monitor["drift"]:
        emit_drift(root, job, report)
    return report


def run_markdown(summary: dict[str, Any], monitor_dir: Path, runs: int) -> str:
    """The run artifact: the summary's fields and the picture of the last ``runs`` runs' monitor."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if k != "monitor")
    text = f"# Relabel run\n\n| | |\n|---|---|\n{rows}\n"
    if m := summary.get("monitor"):
        state = "too few images to tell" if m["too_few"] else "**drift**" if m["drift"] else "no drift"
        text += (f"\n## Monitor (no labels used)\n\n{state}: estimated accuracy {m['estimated_accuracy']:.1f} % "
                 f"(reference {m['reference_accuracy']:.1f} %), {m.get('batches_drifted', 0)} batch(es) drifted\n")
    if last := history(monitor_dir, runs):
        b64 = base64.b64encode(history_png(last)).decode()
        text += f"\n## The last {len(last)} runs\n\n![history](data:image/png;base64,{b64})\n"
    return text


@flow(name="relabel", log_prints=True)
def relabel(inbox: str | None = None, batch_size: int | None = None, root: str = str(ROOT),
            wait_for_models: bool = False) -> dict[str, Any]:
    """Label the new images of the inbox (default: params.yaml's relabel.inbox) exactly once.

    ``wait_for_models`` (the scheduled deployment): before the pipeline has produced its models,
    log that and finish without labelling instead of failing.
    """
    check_served_root(root)
    root_p = Path(root).resolve()
    params = load_params(root_p / "params.yaml")
    if inbox:  # a served run reads (and deletes from) only the folders params.yaml names
        inbox = str(check_served_inbox(inbox, root_p, params.relabel))
    set_threads(params.runtime.threads)
    set_deterministic(params.runtime.deterministic)
    try:
        job = make_job(root_p, params, model_lineage(root_p), inbox=inbox, flow_run_id=str(flow_run.id),
                       overrides={"batch_size": batch_size} if batch_size else None)
    except ModelsMissing as err:
        if not wait_for_models:
            raise
        get_run_logger().warning("nothing labelled: %s", err)
        return {"labelled": 0, "waiting_for_models": True}
    summary = run_job(job, lambda j, batch, i: label_batch(j, batch, i, root=root_p))
    print(json.dumps(summary, indent=2))
    create_markdown_artifact(key="relabel-run", markdown=run_markdown(summary, job.monitor_dir,
                                                                      params.relabel.monitor.history),
                             description="relabel run summary")
    return summary


@flow(name="relabel-drift-alert")
def drift_alert(alert: dict[str, Any], root: str = str(ROOT)) -> str:
    """The alert of a drifted relabel batch: a markdown artifact (``relabel-drift``) with the batch's tests,
    label shares against the reference's and its originals-vs-projections grid. ``alert``: the payload of
    the event ``sda.relabel.drift`` (the automation ``make serve`` registers passes it)."""
    check_served_root(root)
    root_p = Path(root).resolve()
    params = load_params(root_p / "params.yaml")
    grid = find_grid(root_p / params.relabel.labels / "_reports", str(alert.get("batch_id", "")))
    markdown = drift_alert_markdown(alert, grid)
    create_markdown_artifact(key="relabel-drift", markdown=markdown,
                             description=f"drift in relabel batch {alert.get('batch_id', '?')}")
    get_run_logger().warning("drift alert: batch %s, estimated accuracy %s %%", alert.get("batch_id"),
                             alert.get("estimated_accuracy"))
    return markdown


# -- CLI ----------------------------------------------------------------------------------------
def status(argv: list[str]) -> int:
    """``sda relabel status``: the last runs' monitor rows (images, estimated accuracy, drift flags)."""
    parser = argparse.ArgumentParser(prog="python -m flows.relabel status",
                                     description="The last relabel runs, as their monitor saw them (no label used).")
    parser.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    parser.add_argument("--labels", help="label dataset folder (default: relabel.labels)")
    parser.add_argument("-n", "--runs", type=int, help="how many runs (default: relabel.monitor.history)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = load_params(root / "params.yaml")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels = root / (args.labels or params.relabel.labels)
    rows = history(labels / "_monitor", args.runs or params.relabel.monitor.history)
    if not rows:
        print(f"no monitored run in {labels}/_monitor yet (run sda relabel first)")
        return 0
    print(f"{'finished (UTC)':<26}{'run':<10}{'batches':>8}{'images':>8}{'est. acc %':>11}  {'tests fired':<26}"
          f"{'drift':>7}{'too few':>9}")
    for h in rows:
        print(f"{h['finished']:<26}{h['run_id'][:8]:<10}{h['batches']:>8}{h['images']:>8}"
              f"{h['estimated_accuracy']:>11.1f}  {','.join(h['fired']) or '-':<26}{h['drifted']:>7}{h['too_few']:>9}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m flows.relabel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inbox", help="folder of new images (default: relabel.inbox)")
    parser.add_argument("--root", default=str(ROOT), help="repository root whose data/ holds the models")
    parser.add_argument("--labels", help="label dataset folder (default: relabel.labels)")
    parser.add_argument("--quarantine", help="quarantine folder (default: relabel.quarantine)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: relabel.batch_size)")
    parser.add_argument("--adapt", choices=["frozen", "sda+bn"],
                        help="frozen: a label depends on its image alone; sda+bn: guarded adaptation to each batch "
                             "(default: relabel.adapt; docs/streams.md)")
    parser.add_argument("--no-monitor", action="store_true",
                        help="no estimates or drift tests for this run (default: relabel.monitor.enabled)")
    parser.add_argument("--min-age", type=float, help="skip files modified less than this many seconds ago")
    parser.add_argument("--upload-grace", type=float,
                        help="leave truncated files modified less than this many seconds ago for a later run")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    root = Path(args.root).resolve()
    overrides = {k: v for k, v in {"labels": args.labels, "quarantine": args.quarantine,
                                   "batch_size": args.batch_size, "min_age_seconds": args.min_age,
                                   "upload_grace_seconds": args.upload_grace, "adapt": args.adapt}.items()
                 if v is not None}
    try:
        params = load_params(root / "params.yaml")
        if args.no_monitor:
            overrides["monitor"] = params.relabel.monitor.model_copy(update={"enabled": False})
        set_threads(params.runtime.threads)
        set_deterministic(params.runtime.deterministic)
        job = make_job(root, params, model_lineage(root), inbox=args.inbox, overrides=overrides)

        def process(job: RelabelJob, batch: list, index: int) -> BatchReport:
            if index == 0:  # the total is known once the scan ran (under the lock)
                bar.reset(total=sum(len(b) for b in job.batches))
            report = job.process(batch)
            bar.update(len(batch))
            bar.set_postfix(batch=report.batch_id, img_s=f"{report.images_per_second:.1f}", refresh=False)
            return report

        with tqdm(total=0, unit="img", desc="relabel", disable=None) as bar:
            summary = run_job(job, process)
    except (ParamsError, ValueError, RuntimeError) as err:  # bad params, a device that is not there, a held lock
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing or unreadable inbox or models, a full disk, no permission to write
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}" if err.strerror else f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
