"""The SDA pipeline as a Prefect flow: the DVC stages of sda.layout.STAGE_ORDER in order, one Prefect task each.

DVC owns caching and versioning (each task asks DVC to reproduce one stage, and DVC skips it when
its code, params and inputs are unchanged); Prefect owns the run, logs, retries and artifacts.
At the end the results table is printed and published as a markdown artifact.

    python -m flows.pipeline               # run (or resume) the whole pipeline
    python -m flows.pipeline --force       # re-run every stage
    python -m flows.pipeline --profile imagenet   # switch params.yaml to the ImageNet profile and run
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task

from flows.results_report import publish_failure, publish_results
from flows.served import check_served_root
from flows import stage_process
from flows.stage_process import ServerWatch, StageFailed, is_transient, reproduce, use_this_python
from sda.config import ParamsError, load_params
from sda.domains import domain_for, domain_names, set_profile
from tasks import STAGES

ROOT = Path(__file__).resolve().parents[1]


@task(name="dvc-stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5, retry_condition_fn=is_transient)
def run_stage(stage: str, root: str, force: bool = False, timeout: float | None = None) -> dict:
    """One stage through DVC (:func:`flows.stage_process.reproduce`), its lines in the task run's log."""
    return reproduce(stage, root, force, timeout, logger=get_run_logger())


LOCK = Path(".dvc") / "tmp" / "sda-pipeline.lock"  # inside the checkout, git-ignored by DVC


@contextlib.contextmanager
def checkout_lock(root: Path) -> Iterator[None]:
    """Hold the checkout's pipeline lock (``.dvc/tmp/sda-pipeline.lock``, released by the OS even on
    ``kill -9``): a second pipeline run of the same checkout, from any deployment or command, waits
    here (saying so) until the first has finished."""
    lock = FileLock(str(root / LOCK))
    (root / LOCK).parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"another pipeline run holds {root / LOCK}: waiting for it to finish", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@flow(name="sda-pipeline", log_prints=True, on_failure=[publish_failure])
def pipeline(root: str = str(ROOT), stages: list[str] | None = None, force: bool = False,
             profile: str | None = None) -> dict:
    """Validate ``params.yaml``, reproduce the DVC stages in order, publish the results table.

    ``profile`` (a registered domain: ``embedded`` / ``imagenet`` / ``folder``) switches params.yaml's
    profile first.
    """
    check_served_root(root)
    root_p = Path(root).resolve()
    with checkout_lock(root_p), server_watched():  # one run per checkout: a profile switch never lands in another
        return _run_pipeline(root_p, stages, force, profile)


@contextlib.contextmanager
def server_watched() -> Iterator[None]:
    """A :class:`flows.stage_process.ServerWatch` of this run's Prefect server for as long as the block lasts."""
    from prefect.client.orchestration import get_client

    watch = ServerWatch(str(get_client(sync_client=True).api_url))
    stage_process.WATCH = watch
    watch.start()
    try:
        yield
    finally:
        watch.stopped.set()
        stage_process.WATCH = None


def _run_pipeline(root_p: Path, stages: list[str] | None, force: bool, profile: str | None) -> dict:
    if profile is not None and set_profile(root_p / "params.yaml", profile):
        print(f"params.yaml: profile switched to {profile}")
    params = load_params(root_p / "params.yaml")  # fail before any work on a bad params file
    domain_for(params)
    print(f"profile={params.profile} seed={params.runtime.seed} split={params.target_data.split}")
    use_this_python()
    todo = list(stages or STAGES)
    unknown = sorted(set(todo) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    timeouts = params.runtime.stage_timeouts
    if set(timeouts) - set(STAGES):
        raise ParamsError(f"params.yaml: runtime.stage_timeouts names {sorted(set(timeouts) - set(STAGES))}, "
                          f"not stages; stages are {list(STAGES)}")
    runs = []
    for stage in todo:
        t0 = time.perf_counter()
        limit = timeouts.get(stage)
        # Prefect's own limit is the backstop: the stage's processes are killed at `limit` (run_stage)
        step = run_stage.with_options(timeout_seconds=limit + 60) if limit else run_stage
        r = step(stage, str(root_p), force, timeout=limit)
        r["wall"] = round(time.perf_counter() - t0, 1)
        r["prefect"] = round(max(0.0, r["wall"] - r["seconds"]), 1)
        runs.append(r)
    return publish_results(root_p, runs, todo)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages (in pipeline order)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when DVC has them cached")
    parser.add_argument("--profile", choices=list(domain_names()),
                        help="switch params.yaml's profile before running (default: as it is)")
    args = parser.parse_args()
    stages = [s for s in STAGES if s in args.stages] if args.stages else None
    try:  # a bad params file fails here, before Prefect starts; the switch itself happens under the lock
        if args.profile:
            set_profile(Path(args.root) / "params.yaml", args.profile, write=False)
        else:
            domain_for(load_params(Path(args.root) / "params.yaml"))
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    state = pipeline(root=args.root, stages=stages, force=args.force, profile=args.profile, return_state=True)
    if not state.is_completed():  # failed, crashed or cancelled
        err = state.result(raise_on_failure=False)
        if isinstance(err, (StageFailed, ParamsError)):  # the stage's (or the params') own words, no traceback
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2 if isinstance(err, ParamsError) or err.user_error else 1)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
