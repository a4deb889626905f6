"""What every stage shares: argv, params, logging and run-time set-up (:func:`stage_main`) and the
publishing of resumable shard jobs (:func:`run_resumable`)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from sda.config import Params, ParamsError, load_params
from sda.layout import DATA, OUTS, RUNS, STAGE_ORDER, TRAINING_CURVE, TRAINING_SUMMARY, WORK, StageRun
from sda.io.atomic import DISK_FULL, atomic_write_bytes, atomic_write_json, clean_stale_temps, replace_dir
from sda.io.console import printable_console
from sda.io.cluster import SchedulerUnreachableError
from sda.io.resumable_jobs import PROGRESS, jobs_fingerprint, run_shard_jobs
from sda.runtime import pick_device, seed_everything, set_deterministic, set_threads


log = logging.getLogger("sda")


def setup_logging() -> None:
    printable_console()  # a folder name in a message never stops a stage with a codec error
    logging.basicConfig(
        level=os.environ.get("SDA_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def missing_upstream(err: FileNotFoundError, stage: str) -> str | None:
    """For a missing file under ``data/<stage>/`` that another stage writes: which stage to run first."""
    if not err.filename:
        return None
    parts = Path(os.path.relpath(os.path.abspath(err.filename))).parts
    if len(parts) >= 2 and parts[0] == DATA.name and parts[1] in STAGE_ORDER and parts[1] != stage:
        return (f"{err.filename} is missing: stage {parts[1]} has not run in this checkout; run "
                f"`dvc repro {stage}` (it runs what {stage} needs first) or `make run`")
    return None


def _size(n: float) -> str:
    return (f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{int(n)} bytes")


def disk_full_message(stage: str, err: OSError) -> str:
    """The one line for a write that a full disk, quota or file size limit refused: the file and the
    folder, the space free there and what the write needed (when known), what to do, and what is left:
    the previous outputs only where they are (DVC removes a stage's outs before running it) and the
    finished shards a re-run resumes."""
    path = Path(err.filename) if err.filename else DATA
    folder = path if path.is_dir() else path.parent
    anchor = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    try:
        free = _size(shutil.disk_usage(anchor).free)
    except OSError:
        free = "?"
    needed = getattr(err, "needed_bytes", None)
    what = ("a file size limit (ulimit -f) refused it" if err.errno == errno.EFBIG
            else f"{folder} is on a full disk or quota ({free} free there)")
    line = (f"error in stage {stage}: cannot write {path} ({err.strerror}): {what}"
            + (f"; it needed {_size(needed)}" if needed else "") + "; free disk space (or raise the file size limit) and run "
            "again")
    out = OUTS.get(stage)
    if out is not None:
        line += (f"; the previous outputs in {out} are intact" if out.exists() else
                 f"; {out} is not there (DVC removes a stage's outputs before it runs the stage: `dvc checkout "
                 f"{stage}` restores the last ones from its cache)")
    work = sorted(WORK.glob(f"{stage}-*"))
    if work and any(work[0].rglob("*.tar")):
        line += f"; the finished shards in {work[0]} are kept: the next run resumes them"
    return line


def hold_stage_lock(stage: str) -> FileLock:
    """An exclusive lock on ``data/.<stage>.lock`` (filelock, as the checkout's and the relabel stores'
    locks) for the stage's run: a second run of the same stage in this checkout exits 2 at once, saying
    so, instead of racing the first for its outputs."""
    DATA.mkdir(exist_ok=True)
    lock = FileLock(str(DATA / f".{stage}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"error in stage {stage}: another run of stage {stage} is running in this checkout (it holds "
              f"{lock.lock_file}); wait for it to finish, then run again", file=sys.stderr)
        raise SystemExit(2) from None
    return lock


def stage_main(stage: str, doc: str, body: Callable[..., int | None],
               add_args: Callable[[argparse.ArgumentParser], None] | None = None,
               domain_for: Callable[[Params], Any] | None = None) -> None:
    """Parse argv, validate params, set seeds / threads / device, run ``body``, log the time.

    ``body(params, args)``; a stage that reads its domain passes ``domain_for``
    (:func:`sda.domains.domain_for`) and gets ``body(params, args, domain)``: the domain is looked up
    (and checks the params) once, here, before any work. This module imports no domain itself, so
    a stage that needs none does not depend on the domain modules.

    A :class:`ParamsError`, ``FileNotFoundError``, ``ValueError``, an unreachable dask scheduler or a
    full disk exits with status 2 and a message
    instead of a traceback. ``body`` may return the number of images it processed (forward passes
    for training: images x epochs); the closing log line then gives images/s with the peak GPU memory.
    """
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    setup_logging()
    work: dict[str, float] = {}
    status = 1
    try:
        _run_stage(stage, body, args, domain_for, work)
        status = 0
    except SystemExit as err:
        status = err.code if isinstance(err.code, int) else 1
        raise
    finally:
        _record_run(stage, status, work)


def _run_stage(stage: str, body: Callable[..., int | None], args: argparse.Namespace,
               domain_for: Callable[[Params], Any] | None, work: dict[str, float]) -> None:
    """:func:`stage_main` once the arguments are parsed; ``work`` gets ``work_start`` / ``work_seconds``."""
    try:
        params = load_params(args.params)
        domain = (domain_for(params),) if domain_for else ()
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    threads = set_threads(params.runtime.threads)
    set_deterministic(params.runtime.deterministic)
    seed_everything(params.runtime.seed)
    try:
        args.device = pick_device(params.runtime.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("stage %s: device=%s threads=%d seed=%d", stage, args.device, threads, params.runtime.seed)
    body_start = time.time()
    t0 = time.perf_counter()
    lock = hold_stage_lock(stage)
    try:
        images = body(params, args, *domain)
    except FileNotFoundError as err:
        print(f"error in stage {stage}: {missing_upstream(err, stage) or err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, SchedulerUnreachableError) as err:
        print(f"error in stage {stage}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(disk_full_message(stage, err), file=sys.stderr)
        raise SystemExit(2) from None
    lock.release()
    seconds = time.perf_counter() - t0
    work.update(work_start=body_start, work_seconds=round(seconds, 3))
    rate = f", {images} images ({images / seconds:.3g} img/s)" if images and seconds > 0 else ""
    peak = ""
    if args.device.type == "cuda":
        import torch

        peak = f", peak GPU memory {torch.cuda.max_memory_allocated(args.device) / 2**30:.2f} GiB"
    log.info("stage %s done in %.1f s%s%s", stage, seconds, rate, peak)


def _record_run(stage: str, exit_status: int, work: dict[str, float]) -> None:
    """``data/.runs/<stage>.run.json`` (:class:`sda.layout.StageRun`, outside every out), in a checkout
    (where ``data/`` is: a command run elsewhere leaves nothing behind). Its outputs are published by then: a
    record that cannot be written costs the flow a figure (and a user error's retry), never a rerun, so it
    is a warning."""
    from tasks import STARTED

    if not DATA.is_dir():
        return
    try:
        RUNS.mkdir(parents=True, exist_ok=True)
        atomic_write_json(StageRun.path(stage), StageRun(STARTED, exit_status, **work).as_dict())
    except OSError as err:
        what = "its outputs are complete, but its timing" if exit_status == 0 else "its exit status"
        log.warning("stage %s: %s could not be recorded in %s (%s)", stage, what, RUNS, err.strerror or err)


def write_training_metrics(stage: str, summary: dict[str, float | int], columns: list[str],
                           rows: list[dict[str, float | int]]) -> None:
    """A training stage's DVC metrics and plot: ``summary`` (scalars: ``dvc metrics`` / ``dvc exp show``
    columns) to ``TRAINING_SUMMARY[stage]`` (JSON) and its curve, one row per epoch or per logged step, to
    ``TRAINING_CURVE[stage]`` (CSV with ``columns``; ``dvc plots``). Floats keep 6 significant
    digits: the files are content (the same run writes the same bytes), nothing of time or host."""
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
    TRAINING_CURVE[stage].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(TRAINING_SUMMARY[stage], {k: float(fmt(v)) if isinstance(v, float) else v for k, v in summary.items()})
    lines = [",".join(columns)] + [",".join(fmt(row[c]) if c in row else "" for c in columns) for row in rows]
    atomic_write_bytes(TRAINING_CURVE[stage], ("\n".join(lines) + "\n").encode())


def section_json(params: Params, *sections: str) -> dict:
    """The resolved params sections a stage used, to store next to its outputs."""
    return {s: json.loads(getattr(params, s).model_dump_json()) for s in sections}


def run_resumable(stage: str, params: Params, jobs, make_samples, *, plan: dict, meta: dict, out: Path,
                  workers: int | None = None, max_bytes: float = float("inf"), extra_files=None) -> dict:
    """Run a heavy stage's shard jobs resumably, then publish the finished set at ``out`` atomically.

    The published out holds content only (shards, manifests, ``extra_files``); the run's summary
    (timings, resumed shards) is written to ``data/.runs/<stage>.json``, outside every out.

    Work happens in ``data/.work/<stage>-<fingerprint>/``: a re-run of the same command (after
    Ctrl-C, ``kill -9`` or a crash, through DVC or not) resumes there; other params get another
    work directory, and stale ones of this stage are removed. ``extra_files(work_dir)`` adds files
    (plans, indexes) before publishing.
    """
    fp = jobs_fingerprint(plan, jobs)
    work_root = WORK
    work = work_root / f"{stage}-{fp[:16]}"
    for stale in work_root.glob(f"{stage}-*"):
        if stale != work:
            shutil.rmtree(stale, ignore_errors=True)
    rt = params.runtime
    summary = run_shard_jobs(work, jobs, make_samples, plan=plan, meta=meta,
                             workers=rt.workers if workers is None else workers, scheduler=rt.scheduler,
                             max_bytes=max_bytes, desc=stage, deterministic=rt.deterministic)
    if extra_files:
        extra_files(work)
    # the out is content only: the progress file (timings) stays behind, the run record goes beside;
    # the record first: if it cannot be written, the progress file still says which shards are done
    RUNS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RUNS / f"{stage}.json", {"summary": summary, "fingerprint": fp})
    (work / PROGRESS).unlink(missing_ok=True)
    clean_stale_temps(out.parent, out.name)
    replace_dir(work, out)
    return summary

