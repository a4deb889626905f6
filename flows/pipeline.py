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
import contextlib
import json
import logging
import os
import re
import shutil
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
from prefect.artifacts import create_markdown_artifact

from flows.serve import check_served_root
from sda.config import ParamsError, load_params
from sda.domains import domain_for, domain_names, set_profile
from sda.layout import RUNS
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
    stage's message says what to fix), which a retry cannot mend."""

    def __init__(self, stage: str, exit_status: int | None, tail: str) -> None:
        self.stage, self.exit_status = stage, exit_status
        self.user_error = exit_status == 2
        kind = "a user error: fix what it names, then run again" if self.user_error else "retried once"
        super().__init__(f"stage {stage} failed (exit status {exit_status}; {kind}):\n{tail}")


def _transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry crashes and kills, never a user error."""
    return not (isinstance(state.data, StageFailed) and state.data.user_error)


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
def run_stage(stage: str, root: str, force: bool = False, server: str | None = None) -> dict:
    """``dvc repro --single-item <stage>`` as a subprocess; returns whether it ran and how long it took.

    The stage's own output goes to the run's log line by line (visible in the Prefect UI). DVC's
    repository lock makes a second pipeline started meanwhile wait for each stage
    (``--wait-for-lock``), and it then finds the stage cached. ``server``: the socket of a
    :func:`stage_server`, which then runs the stage's command warm. Raises :class:`StageFailed`.
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
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="backslashreplace") as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            ran |= line.startswith(f"Running stage '{stage}'")
            tail.append(line)
            logger.info("%s", line)
    if proc.returncode != 0:
        status = re.search(r"exited with (-?\d+)", "\n".join(tail))
        err = StageFailed(stage, int(status.group(1)) if status else proc.returncode, "\n".join(tail))
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


def _results_markdown(root: Path, runs: list[dict]) -> str:
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    table = (root / "metrics" / "results.md").read_text()
    parts = [
        f"# SDA results ({metrics.get('split', 'test')} split, top-1 %)",
        table,
        "Mean over the corruption domains: "
        + ", ".join(f"{k} {v:.1f}" for k, v in metrics["mean"].items()),
        "## Stages\n" + time_table(runs),
    ]
    grid = root / "metrics" / "projection_grid.png"
    if grid.is_file() and grid.stat().st_size < 2_000_000:
        b64 = base64.b64encode(grid.read_bytes()).decode()
        parts.append(f"## Originals vs projections\n![projection grid](data:image/png;base64,{b64})")
    return "\n\n".join(parts)


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


@flow(name="sda-pipeline", log_prints=True)
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
    runs = []
    with stage_server(root_p, warm) as server:
        for stage in todo:
            t0 = time.perf_counter()
            r = run_stage(stage, str(root_p), force, server)
            r["wall"] = round(time.perf_counter() - t0, 1)
            r["prefect"] = round(max(0.0, r["wall"] - r["seconds"]), 1)
            runs.append(r)
    print("Where the time went:\n" + time_table(runs))
    metrics_path = root_p / "metrics" / "evaluate.json"
    if "evaluate" in todo and metrics_path.is_file():
        md = _results_markdown(root_p, runs)
        print((root_p / "metrics" / "results.md").read_text())
        for w in json.loads(metrics_path.read_text()).get("warnings", []):
            get_run_logger().warning("%s", w)  # the synthetic domain is weak: named stage and setting
        create_markdown_artifact(key="sda-results", markdown=md, description="SDA pipeline results")
        return {"stages": runs, "metrics": json.loads(metrics_path.read_text())}
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
        pipeline(root=args.root, stages=stages, force=args.force, warm=not args.cold, profile=args.profile)


if __name__ == "__main__":
    main()
