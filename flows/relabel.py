"""Label new target images as they arrive, with the models the pipeline produced (SDA).

Reads the inbox (``relabel.inbox`` in params.yaml, or ``--inbox``), quarantines bad files, projects
and predicts the good ones in batches, and appends the labels to the Parquet dataset ``data/labels/``
(partitioned by date). Every image is labelled exactly once, whatever is killed when; two runs at
once are serialised by a lock. See :mod:`sda.relabel.job` for the guarantees.

    python -m flows.relabel --inbox incoming/      # the same job without Prefect (no server needed)
    python -m flows.relabel status                 # the last runs: images, estimated accuracy, drift (sda relabel status)
    prefect deployment run relabel/on-demand       # through the Prefect server (make serve)

This module is the command line, and imports neither Prefect nor the models before the params and
the inbox are checked (a mistake answers in a second). The Prefect flow, :mod:`flows.relabel_flow`, runs
one task per batch and publishes a markdown artifact per batch (counts, label distribution, quarantine
reasons, originals vs projections by predicted class) and one per run (with the picture of the last
runs' monitor). A drifted batch emits the event ``sda.relabel.drift``; under
``make serve`` an automation answers it with a run of ``relabel/drift-alert`` (``drift_alert``: the
alert artifact) and, with ``relabel.monitor.pause_on_drift``, by pausing ``relabel/scheduled``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sda.config import Params, ParamsError, load_params
from sda.layout import METRIC_FILES, MODEL_STAGES, MODELS, OUTS
from sda.relabel.inbox import open_inbox

if TYPE_CHECKING:
    from sda.relabel.job import Lineage, RelabelJob
    from sda.relabel.report import BatchReport

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("sda.relabel")


def lock_stages(root: Path) -> dict[str, Any]:
    """The ``stages`` of the checkout's ``dvc.lock`` (what its last pipeline run recorded), read once per
    relabel run. Raises :class:`ModelsMissing` before the pipeline has run."""
    from sda.relabel.service import ModelsMissing

    lock = root / "dvc.lock"
    if not lock.is_file():
        raise ModelsMissing(f"{lock} is missing: run the pipeline first (make run, or dvc repro)")
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {})


def _ran_on(stages: dict[str, Any], stage: str, hashes: dict[Path, str]) -> bool:
    """Whether ``stage``'s last run read the folders of ``hashes`` with these DVC hashes (its deps in dvc.lock)."""
    deps = {d["path"]: d.get("md5") for d in stages.get(stage, {}).get("deps") or []}
    return all(deps.get(str(path)) == md5 for path, md5 in hashes.items())


def model_lineage(root: Path, stages: dict[str, Any] | None = None) -> Lineage:
    """What produced the models relabelling loads, as that pipeline run recorded it: the DVC hash of
    each model out (``dvc.lock``; ``stages``: its parsed :func:`lock_stages`) and the params hash and code
    version its ``evaluate`` stage wrote (``metrics/evaluate.json``, ``protocol``), not today's params or
    checkout. Raises :class:`ModelsMissing` before the pipeline has run to its end."""
    from sda.relabel.job import Lineage
    from sda.relabel.service import ModelsMissing

    stages = lock_stages(root) if stages is None else stages
    hashes = {}
    for role, stage in MODEL_STAGES.items():
        outs = stages.get(stage, {}).get("outs") or []
        if not outs:
            raise ModelsMissing(f"{root / 'dvc.lock'} has no output for stage {stage}: run `dvc repro {stage}` first")
        hashes[role] = outs[0]["md5"]
    metrics = root / METRIC_FILES["evaluate"]
    if not metrics.is_file():
        raise ModelsMissing(f"{metrics} is missing: run the pipeline to its end first (make run, or dvc repro)")
    # the record is of these models only if evaluate ran on them (dvc.lock is written stage by stage)
    for role in ("source", "aligned"):
        if not _ran_on(stages, "evaluate", {MODELS[role]: hashes[role]}):
            raise ModelsMissing(f"{MODELS[role]} changed since evaluate last ran: run the pipeline to its end "
                                "first (make run, or dvc repro)")
    protocol = json.loads(metrics.read_text()).get("protocol") or {}
    return Lineage(source_model_hash=hashes["source"], aligned_model_hash=hashes["aligned"],
                   diffusion_model_hash=hashes["diffusion"],
                   params_hash=str(protocol.get("params_sha256", "unrecorded"))[:16],
                   code_version=str(protocol.get("code_version", "unrecorded")))


def computed_reference(root: Path, lineage: Lineage, stages: dict[str, Any]) -> Path | None:
    """The pipeline's ``monitor_reference`` out when ``dvc.lock`` (``stages``) says that stage ran on the
    models of ``lineage`` (the relabel job then reads its reference instead of computing one), else None."""
    out = root / OUTS["monitor_reference"]
    models = {MODELS["source"]: lineage.source_model_hash, MODELS["aligned"]: lineage.aligned_model_hash,
              MODELS["diffusion"]: lineage.diffusion_model_hash}
    return out if out.is_dir() and _ran_on(stages, "monitor_reference", models) else None


def relabel_job(root: Path, params: Params, **kwargs: Any) -> RelabelJob:
    """:func:`sda.relabel.service.make_job` with the models' lineage and the pipeline's monitor reference,
    both from one reading of ``dvc.lock`` (the CLI and the flow start each run here); ``kwargs``: make_job's."""
    from sda.relabel.service import make_job

    stages = lock_stages(root)
    lineage = model_lineage(root, stages)
    return make_job(root, params, lineage, computed_reference=computed_reference(root, lineage, stages), **kwargs)


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
    from sda.relabel.monitor import MONITOR_DIR, history

    rows = history(labels / MONITOR_DIR, args.runs or params.relabel.monitor.history)
    if not rows:
        print(f"no monitored run in {labels / MONITOR_DIR} yet (run sda relabel first)")
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
        # the inbox before the imports below (torch, the models): a wrong path answers in a second
        os.close(open_inbox(Path(args.inbox) if args.inbox else root / params.relabel.inbox))
    except (ParamsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from sda.relabel.service import run_job
    from sda.runtime import set_deterministic, set_threads

    try:
        if args.no_monitor:
            overrides["monitor"] = params.relabel.monitor.model_copy(update={"enabled": False})
        set_threads(params.runtime.threads)
        set_deterministic(params.runtime.deterministic)
        job = relabel_job(root, params, inbox=args.inbox, overrides=overrides)

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
