"""The SDA pipeline as a Prefect flow: the nine DVC stages in order, one Prefect task each.

DVC owns caching and versioning (each task asks DVC to reproduce one stage, and DVC skips it when
its code, params and inputs are unchanged); Prefect owns the run, logs, retries and artifacts.
At the end the results table is printed and published as a markdown artifact.

    python -m flows.pipeline               # run (or resume) the whole pipeline
    python -m flows.pipeline --force       # re-run every stage
    python -m flows.pipeline --profile imagenet   # switch params.yaml to the ImageNet profile and run
"""

from __future__ import annotations

import argparse
import base64
import collections
import csv
import contextlib
import contextvars
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from flows.served import check_served_root
from sda.config import ParamsError, load_params
from sda.domains import domain_for, domain_names, set_profile
from sda.io.resumable_jobs import PROGRESS
from sda.layout import METRIC_FILES, RUNS, TRAINING_CURVE, TRAINING_STAGES, TRAINING_SUMMARY, WORK
from tasks import STAGES
from tasks.launch import choose_wait_policy
from tasks.stage_server import ENV as STAGE_SERVER_ENV

ROOT = Path(__file__).resolve().parents[1]


def _env_for_stages() -> None:
    """Stage commands run ``python -m tasks.<stage>`` through the shell: make that the python of
    this interpreter (the project's venv) and keep the repo importable."""
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


class StageFailed(RuntimeError):
    """A stage's command failed under ``dvc repro``; the message ends with its last output lines.

    ``user_error``: the stage exited with status 2 (bad params, a missing or unreadable input: the
    stage's message says what to fix), which a retry cannot mend. ``timeout``: the seconds of
    ``runtime.stage_timeouts`` after which the flow killed it (not retried either)."""

    def __init__(self, stage: str, exit_status: int | None, tail: str, timeout: float | None = None) -> None:
        self.stage, self.exit_status, self.timeout = stage, exit_status, timeout
        self.user_error = exit_status == 2
        if timeout is not None:
            what = (f"stopped after {timeout:g} s, the limit of runtime.stage_timeouts.{stage}: raise it, or "
                    f"remove it for no limit")
        else:
            kind = "a user error: fix what it names, then run again" if self.user_error else "retried once"
            what = f"exit status {exit_status}; {kind}"
        super().__init__(f"stage {stage} failed ({what}):\n{tail}")


def _transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry crashes and kills, never a user error or a timeout."""
    err = state.data
    if isinstance(err, TimeoutError):  # Prefect's backstop of runtime.stage_timeouts
        return False
    return not (isinstance(err, StageFailed) and (err.user_error or err.timeout is not None))


def _kill_group(pid: int) -> None:
    """Kill the process group that ``dvc repro`` leads (DVC, the stage command and what they started;
    a warm stage's child goes with its command, tasks/stage_server.py)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Progress(threading.Thread):
    """While a stage runs, its resumable shard jobs' progress (``data/.work/<stage>-*/progress.json``:
    shards done of the plan's) as a Prefect progress artifact, created when the first shard is recorded
    and updated every ``every`` seconds; stages without shard jobs publish none."""

    def __init__(self, root: Path, stage: str, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.context = contextvars.copy_context()  # the task run's: the artifact belongs to it
        self.root, self.stage, self.every = root, stage, every
        self.done = threading.Event()
        self.artifact = None
        self.shown = -1.0

    def read(self) -> float | None:
        """Percent of the newest plan's shard jobs finished, or None before there is one (or while the
        stage swaps its work folders)."""
        try:
            files = sorted((self.root / WORK).glob(f"{self.stage}-*/{PROGRESS}"), key=lambda f: f.stat().st_mtime)
            p = json.loads(files[-1].read_text()) if files else None
        except (OSError, ValueError):
            return None
        return 100.0 * len(p.get("shards", {})) / p["jobs"] if p and p.get("jobs") else None

    def publish(self, pct: float) -> None:
        if pct == self.shown:
            return
        desc = f"{self.stage}: shards written of the plan's (resumable: a re-run continues from here)"
        if self.artifact is None:
            self.artifact = create_progress_artifact(pct, key=f"sda-{self.stage.replace('_', '-')}", description=desc)
        else:
            update_progress_artifact(self.artifact, pct)
        self.shown = pct

    def run(self) -> None:
        self.context.run(self._watch)

    def _watch(self) -> None:
        while not self.done.wait(self.every):
            with contextlib.suppress(Exception):  # progress is a courtesy: never a reason to stop the stage
                pct = self.read()
                if pct is not None:
                    self.publish(pct)

    def finish(self, ok: bool) -> None:
        self.done.set()
        self.join(self.every + 5)
        if ok and self.artifact is not None:
            with contextlib.suppress(Exception):
                self.context.run(self.publish, 100.0)


@contextlib.contextmanager
def stage_server(root: Path, enabled: bool = True, env: dict[str, str] | None = None) -> Iterator[str | None]:
    """A warm stage server (:mod:`tasks.stage_server`) for the stages of one run: its socket path,
    or ``None`` when ``enabled`` is false or this platform has no ``fork`` / fd passing.

    Not waited for: it imports the stages' libraries (~10 s) while the first stages run, and a stage
    command that finds it not ready yet runs in its own process. Its lines go to the ``sda`` log;
    it is stopped (and its socket removed) when the block ends, and stops by itself if this process
    dies. A server already named by ``SDA_STAGE_SERVER`` (one started by ``main`` while Prefect
    starts, or by you) is used as it is. ``env``: the server's environment (default: this process's);
    it serves only commands whose import-time variables match it."""
    if not (enabled and hasattr(os, "fork") and hasattr(socket, "send_fds")):
        yield None
        return
    if os.environ.get(STAGE_SERVER_ENV):
        yield os.environ[STAGE_SERVER_ENV]
        return
    choose_wait_policy(os.environ if env is None else env)  # the server's and its commands' (DVC inherits it)
    tmp = Path(tempfile.mkdtemp(prefix="sda-stages-"))
    address = str(tmp / "stage.sock")
    log = logging.getLogger("sda.stage_server")
    log.setLevel(logging.INFO)  # one line per stage command, and anything the server says
    cmd = [sys.executable, "-m", "tasks.stage_server", "--socket", address, "--parent", str(os.getpid())]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="backslashreplace")

    def relay() -> None:
        for line in proc.stdout:
            log.info("%s", line.rstrip())

    drain = threading.Thread(target=relay, daemon=True)
    drain.start()
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(5)
        shutil.rmtree(tmp, ignore_errors=True)


@task(name="dvc-stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5, retry_condition_fn=_transient)
def run_stage(stage: str, root: str, force: bool = False, server: str | None = None,
              timeout: float | None = None) -> dict:
    """``dvc repro --single-item <stage>`` as a subprocess; returns whether it ran and how long it took.

    The stage's own output goes to the run's log line by line (visible in the Prefect UI); the
    progress of its shard jobs, if it has any, to a progress artifact (:class:`_Progress`). DVC's
    repository lock makes a second pipeline started meanwhile wait for each stage
    (``--wait-for-lock``), and it then finds the stage cached. ``server``: the socket of a
    :func:`stage_server`, which then runs the stage's command warm. ``timeout``: seconds after which
    its processes are killed. Raises :class:`StageFailed`.
    """
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage, *(["--force"] * force)]
    started = time.time()
    t0 = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    ran = False
    # text mode reads tqdm's carriage-return redraws as lines: one log line per redraw (every 10 s)
    env = {k: v for k, v in os.environ.items() if k != STAGE_SERVER_ENV}  # cold: no server, not even yours
    if server:
        env[STAGE_SERVER_ENV] = server
    progress = _Progress(Path(root), stage)
    progress.start()
    timed_out = threading.Event()
    # its own process group, so that a timeout (or this process being stopped) ends all of it
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="backslashreplace", start_new_session=True) as proc:
        watchdog = threading.Timer(timeout, lambda: (timed_out.set(), _kill_group(proc.pid))) if timeout else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in proc.stdout:
                line = line.rstrip()
                if not line:
                    continue
                ran |= line.startswith(f"Running stage '{stage}'")
                tail.append(line)
                logger.info("%s", line)
        except BaseException:  # Ctrl-C or a cancel: the stage's group no longer hears the terminal
            _kill_group(proc.pid)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
    progress.finish(proc.returncode == 0)
    if proc.returncode != 0:
        status = re.search(r"exited with (-?\d+)", "\n".join(tail))
        err = StageFailed(stage, int(status.group(1)) if status else proc.returncode, "\n".join(tail),
                          timeout=timeout if timed_out.is_set() else None)
        logger.error("%s", err)
        raise err
    seconds = round(time.perf_counter() - t0, 1)
    state = "ran" if ran else "cached (unchanged)"
    logger.info("stage %-18s %s in %.1f s", stage, state, seconds)
    return {"stage": stage, "ran": ran, "seconds": seconds, **_split_time(Path(root), stage, started, seconds)}


def _split_time(root: Path, stage: str, started: float, seconds: float) -> dict:
    """The stage's ``work`` (its own record, tasks.common), the ``start_up`` of its process (imports,
    params) and the ``dvc`` rest of ``seconds``, when the stage ran in this call."""
    try:
        t = json.loads((root / RUNS / f"{stage}.timing.json").read_text())
    except (OSError, ValueError):
        return {}
    if t["process_start"] < started:  # an older run's record: the stage was cached
        return {}
    start_up = t["work_start"] - t["process_start"]
    return {"work": round(t["work_seconds"], 1), "start_up": round(start_up, 1),
            "dvc": round(max(0.0, seconds - start_up - t["work_seconds"]), 1)}


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


def _results_markdown(root: Path, runs: list[dict], metrics: dict, table: str) -> str:
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
             profile: str | None = None, warm: bool = True) -> dict:
    """Validate ``params.yaml``, reproduce the DVC stages in order, publish the results table.

    ``profile`` (a registered domain: ``embedded`` / ``imagenet`` / ``folder``) switches params.yaml's
    profile first. ``warm``: run the stage commands in a :func:`stage_server` (same bytes, without
    each stage's 5-10 s of imports); false: each in its own fresh process.
    """
    check_served_root(root)
    root_p = Path(root).resolve()
    with checkout_lock(root_p):  # one run per checkout: a profile switch never lands inside another run
        return _run_pipeline(root_p, stages, force, profile, warm)


def _run_pipeline(root_p: Path, stages: list[str] | None, force: bool, profile: str | None, warm: bool) -> dict:
    if profile is not None and set_profile(root_p / "params.yaml", profile):
        print(f"params.yaml: profile switched to {profile}")
    params = load_params(root_p / "params.yaml")  # fail before any work on a bad params file
    domain_for(params)
    print(f"profile={params.profile} seed={params.runtime.seed} split={params.target_data.split}")
    _env_for_stages()
    todo = list(stages or STAGES)
    unknown = sorted(set(todo) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    timeouts = params.runtime.stage_timeouts
    if set(timeouts) - set(STAGES):
        raise ParamsError(f"params.yaml: runtime.stage_timeouts names {sorted(set(timeouts) - set(STAGES))}, "
                          f"not stages; stages are {list(STAGES)}")
    runs = []
    with stage_server(root_p, warm) as server:
        for stage in todo:
            t0 = time.perf_counter()
            limit = timeouts.get(stage)
            # Prefect's own limit is the backstop: the stage's processes are killed at `limit` (run_stage)
            step = run_stage.with_options(timeout_seconds=limit + 60) if limit else run_stage
            r = step(stage, str(root_p), force, server, timeout=limit)
            r["wall"] = round(time.perf_counter() - t0, 1)
            r["prefect"] = round(max(0.0, r["wall"] - r["seconds"]), 1)
            runs.append(r)
    print("Where the time went:\n" + time_table(runs))
    metrics_path = root_p / METRIC_FILES["evaluate"]
    if "evaluate" in todo and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        table = (root_p / METRIC_FILES["results"]).read_text()
        print(table)
        if "streams" in todo and (root_p / METRIC_FILES["streams_table"]).is_file():
            print("Methods x target streams (top-1 %, docs/streams.md):\n" + (root_p / METRIC_FILES["streams_table"]).read_text())
        for w in metrics.get("warnings", []):
            get_run_logger().warning("%s", w)  # the synthetic domain is weak: named stage and setting
        create_markdown_artifact(key="sda-results", markdown=_results_markdown(root_p, runs, metrics, table),
                                 description="SDA pipeline results")
        publish_tables(root_p, metrics)
        return {"stages": runs, "metrics": metrics}
    return {"stages": runs}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages (in pipeline order)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when DVC has them cached")
    parser.add_argument("--cold", action="store_true",
                        help="each stage command in its own fresh process (default: warm, in a stage server)")
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
    # the stage server imports while Prefect starts its temporary server: the first stage runs warm too
    with stage_server(Path(args.root).resolve(), not args.cold) as server:
        if server:
            os.environ[STAGE_SERVER_ENV] = server
        state = pipeline(root=args.root, stages=stages, force=args.force, warm=not args.cold, profile=args.profile,
                         return_state=True)
    if not state.is_completed():  # failed, crashed or cancelled
        err = state.result(raise_on_failure=False)
        if isinstance(err, (StageFailed, ParamsError)):  # the stage's (or the params') own words, no traceback
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2 if isinstance(err, ParamsError) or err.user_error else 1)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
