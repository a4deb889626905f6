"""What a pipeline run publishes: where the time went, the results table and pictures as a markdown
artifact, the results and training curves as table artifacts, and why a run failed."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sda.layout import METRIC_FILES, TRAINING_CURVE, TRAINING_STAGES, TRAINING_SUMMARY

__all__ = ["publish_failure", "publish_results", "publish_tables", "time_table", "training_markdown"]


def time_table(runs: list[dict]) -> str:
    """Markdown: per stage, its work against the wall time around it (process start-up, DVC,
    Prefect), and the share of the run that was not the stages' work."""
    rows = ["| stage | state | work s | start-up s | dvc s | prefect s | wall s |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        cells = [r.get(k, "") for k in ("work", "start_up", "dvc")]
        rows.append(f"| {r['stage']} | {'ran' if r['ran'] else 'cached'} | " + " | ".join(map(str, cells))
                    + f" | {r.get('prefect', '')} | {r.get('wall', r['seconds'])} |")
    wall = sum(r.get("wall", r["seconds"]) for r in runs)
    work = sum(r.get("work", 0.0) for r in runs)
    if wall > 0:
        rows.append(f"\n{work:.0f} s of stage work in {wall:.0f} s: orchestration and start-up "
                    f"{100 * (wall - work) / wall:.1f}% of the run")
    return "\n".join(rows)


def results_markdown(root: Path, runs: list[dict], metrics: dict, table: str) -> str:
    """The run's markdown artifact: ``table`` (metrics/results.md), the corruption means of ``metrics``
    (metrics/evaluate.json), where the time went, the training summaries, the methods x streams table
    (metrics/streams.md) and the pictures."""
    parts = [
        f"# SDA results ({metrics.get('split', 'test')} split, top-1 %)",
        table,
        "Mean over the corruption domains: "
        + ", ".join(f"{k} {v:.1f}" for k, v in metrics["mean"].items()),
        "## Stages\n" + time_table(runs),
    ]
    training = training_markdown(root)
    if training:
        parts.append(training)
    streams = root / METRIC_FILES["streams_table"]
    if streams.is_file():  # every method on every target stream (stage streams)
        parts.append("## Methods x target streams (top-1 %; docs/streams.md)\n" + streams.read_text())
    for key, title in (("grid", "Originals vs projections"),
                       ("streams_heatmap", "Methods x target streams"),
                       ("synthetic_grid", "The synthetic domain: generated per class, and after synth_align"),
                       ("confusion", "Confusion per domain: Source and SDA (rows: actual class)")):
        picture = root / METRIC_FILES[key]
        if picture.is_file() and picture.stat().st_size < 2_000_000:
            b64 = base64.b64encode(picture.read_bytes()).decode()
            parts.append(f"## {title}\n![{key}](data:image/png;base64,{b64})")
    return "\n\n".join(parts)


def training_markdown(root: Path) -> str:
    """The training stages' summaries (metrics/<stage>.json) as a markdown table; their curves are DVC
    plots (``dvc plots show``) and the flow's table artifacts."""
    rows = []
    for stage in TRAINING_STAGES:
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads((root / TRAINING_SUMMARY[stage]).read_text())
            rows.append(f"| {stage} | " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in summary.items()) + " |")
    return "## Training\n| stage | summary |\n|---|---|\n" + "\n".join(rows) if rows else ""


def publish_tables(root: Path, metrics: dict) -> None:
    """Table artifacts beside the markdown one: the results per domain, and each training stage's curve."""
    methods = list(metrics["mean"])  # the main methods, in the table's order
    table = [{"domain": d, **{m: acc[m] for m in methods}} for d, acc in metrics["domains"].items()]
    table.append({"domain": "mean (corruptions)", **metrics["mean"]})
    create_table_artifact(table, key="sda-results-table", description="Top-1 % per target domain and method")
    for stage in TRAINING_STAGES:
        curve = root / TRAINING_CURVE[stage]
        with contextlib.suppress(OSError):
            with curve.open() as f:
                rows = list(csv.DictReader(f))
            if rows:
                create_table_artifact(rows, key=f"sda-training-{stage.replace('_', '-')}",
                                      description=f"{stage}: its training curve (also `dvc plots show`)")


def publish_failure(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` hook: the failed stage's message and last lines as a markdown artifact,
    where the UI shows it beside the run."""
    with contextlib.suppress(Exception):
        create_markdown_artifact(key="sda-failure", description=f"why flow run {flow_run.name} failed",
                                 markdown=f"# The pipeline run failed\n\n```\n{state.message or state.name}\n```\n")


def publish_results(root: Path, runs: list[dict], todo: list[str]) -> dict:
    """Print where the time went and, when ``evaluate`` ran in this call, the results (and the streams
    table), log the synthetic domain's warnings and publish the artifacts; returns the flow's result."""
    print("Where the time went:\n" + time_table(runs))
    metrics_path = root / METRIC_FILES["evaluate"]
    if "evaluate" not in todo or not metrics_path.is_file():
        return {"stages": runs}
    metrics = json.loads(metrics_path.read_text())
    table = (root / METRIC_FILES["results"]).read_text()
    print(table)
    streams = root / METRIC_FILES["streams_table"]
    if "streams" in todo and streams.is_file():
        print("Methods x target streams (top-1 %, docs/streams.md):\n" + streams.read_text())
    for w in metrics.get("warnings", []):
        get_run_logger().warning("%s", w)  # the synthetic domain is weak: named stage and setting
    create_markdown_artifact(key="sda-results", markdown=results_markdown(root, runs, metrics, table),
                             description="SDA pipeline results")
    publish_tables(root, metrics)
    return {"stages": runs, "metrics": metrics}
