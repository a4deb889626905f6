"""The Prefect side of relabelling: the flow ``relabel`` (one task per batch, a markdown artifact per batch
and per run), the drift event ``sda.relabel.drift`` of a drifted batch and the flow ``relabel-drift-alert``
that the automation of ``make serve`` starts on it (:mod:`flows.serve`). The same job without Prefect:
``python -m flows.relabel`` (:mod:`flows.relabel`, which imports none of this).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event
from prefect.runtime import deployment, flow_run

from flows.relabel import ROOT, relabel_job
from flows.served import check_served_inbox, check_served_root
from sda.config import load_params
from sda.relabel.job import RelabelJob
from sda.relabel.monitor import history
from sda.relabel.report import BatchReport, drift_alert_markdown, find_grid, history_png
from sda.relabel.service import ModelsMissing, run_job
from sda.runtime import set_deterministic, set_threads

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
    # named, so that Prefect's event feed links them by name rather than showing their ids
    related = [{"prefect.resource.id": f"prefect.{kind}.{rid}", "prefect.resource.role": kind,
                "prefect.resource.name": name or rid}
               for kind, rid, name in (("deployment", deployment.id, deployment.name),
                                       ("flow-run", flow_run.id, flow_run.name)) if rid]
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
        job = relabel_job(root_p, params, inbox=inbox, flow_run_id=str(flow_run.id),
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
