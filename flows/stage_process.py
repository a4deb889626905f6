"""How the pipeline flow runs one DVC stage: ``dvc repro --single-item`` in its own process group, its
lines to the run's log, a timeout that kills the group, exit codes read as :class:`StageFailed` (a user
error, a timeout, or a crash worth one retry), the shard jobs' progress as a Prefect artifact."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from sda.io.resumable_jobs import PROGRESS
from sda.layout import WORK, StageRun

__all__ = ["ServerWatch", "StageFailed", "is_transient", "reproduce", "use_this_python"]

SERVER_GONE_EXIT = 3  # the exit status of a run whose Prefect server stopped answering


def use_this_python() -> None:
    """Stage commands run ``python -m tasks.<stage>`` through the shell: make that the python of
    this interpreter (the project's venv) and keep the repo importable."""
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


class StageFailed(RuntimeError):
    """A stage's command failed under ``dvc repro``; the message ends with its last output lines.

    ``exit_status``: the stage command's own (:class:`sda.layout.StageRun`), None where it left no record
    (killed, or a crash before its start); ``user_error``: the stage exited with status 2 (bad params, a
    missing or unreadable input: the stage's message says what to fix), which a retry cannot mend.
    ``timeout``: the seconds of ``runtime.stage_timeouts`` after which the flow killed it (not retried
    either)."""

    def __init__(self, stage: str, exit_status: int | None, tail: str, timeout: float | None = None) -> None:
        self.stage, self.exit_status, self.timeout = stage, exit_status, timeout
        self.user_error = exit_status == 2
        if timeout is not None:
            what = (f"stopped after {timeout:g} s, the limit of runtime.stage_timeouts.{stage}: raise it, or "
                    f"remove it for no limit")
        else:
            kind = "a user error: fix what it names, then run again" if self.user_error else "retried once"
            status = "no exit status of its own (killed or crashed)" if exit_status is None else f"exit status {exit_status}"
            what = f"{status}; {kind}"
        super().__init__(f"stage {stage} failed ({what}):\n{tail}")


def is_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry crashes and kills, never a user error or a timeout."""
    err = state.data
    if isinstance(err, TimeoutError):  # Prefect's backstop of runtime.stage_timeouts
        return False
    return not (isinstance(err, StageFailed) and (err.user_error or err.timeout is not None))


class ServerWatch(threading.Thread):
    """The Prefect server, probed every ``every`` seconds while a pipeline run lasts (``GET /health``).

    Prefect's client retries a dead API for minutes, then the run ends in tracebacks and a state line
    that is not so. When the server has not answered for ``grace`` seconds, this prints one line instead
    (the server is gone; the stage running keeps running under DVC, which records it; how to go on), waits
    for that stage's process to end (the stage writes its lines into this process: leaving at once would
    break its pipe), and ends the process with :data:`SERVER_GONE_EXIT`, with no traceback."""

    def __init__(self, api_url: str, every: float = 2.0, grace: float = 6.0) -> None:
        super().__init__(daemon=True, name="prefect-server-watch")
        self.url = api_url.rstrip("/") + "/health"
        self.every, self.grace = every, grace
        self.stage: str | None = None
        self.last_stage: str | None = None
        self.proc: subprocess.Popen | None = None
        self.stopped = threading.Event()

    def healthy(self) -> bool:
        """False only when nothing listens any more (connection refused or dropped); a slow or erring
        server is alive: a loaded machine must never stop a run."""
        import httpx

        try:
            httpx.get(self.url, timeout=10.0)
        except (httpx.ConnectError, httpx.RemoteProtocolError):
            return False
        except httpx.HTTPError:
            pass
        return True

    def run(self) -> None:
        failing_since: float | None = None
        while not self.stopped.wait(self.every):
            if self.healthy():
                failing_since = None
                continue
            failing_since = failing_since if failing_since is not None else time.monotonic()
            if time.monotonic() - failing_since >= self.grace:
                self.server_gone()

    def server_gone(self) -> None:
        stage, proc = self.stage, self.proc
        running = proc is not None and proc.poll() is None
        where = (f"during stage {stage}: the stage keeps running under DVC, which records it when it ends; " if running
                 else f"after stage {self.last_stage} ended (DVC recorded it); " if self.last_stage else "")
        # Prefect's own "Error logging to API" may have left its line open
        sys.stderr.write(f"\nerror: the Prefect server ({self.url.rsplit('/', 1)[0]}) stopped answering {where}this "
                         f"run stops {'then ' if running else ''}with exit status "
                         f"{SERVER_GONE_EXIT}; start the server again (or none: `python -m flows.pipeline` starts its "
                         "own) and run the pipeline again (or `dvc repro`): what finished is cached\n")
        sys.stderr.flush()
        if proc is not None:
            proc.wait()
        os._exit(SERVER_GONE_EXIT)


WATCH: ServerWatch | None = None  # the pipeline run's, set by flows.pipeline; reproduce tells it the stage


def _kill_group(pid: int) -> None:
    """Kill the process group that ``dvc repro`` leads (DVC, the stage command and what they started)."""
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


def reproduce(stage: str, root: str, force: bool = False, timeout: float | None = None, logger: logging.Logger | logging.LoggerAdapter | None = None) -> dict:
    """``dvc repro --single-item <stage>`` as a subprocess in its own process group; returns whether it ran
    and how long it took (``seconds``; with ``work`` / ``start_up`` / ``dvc`` when it ran).

    The stage's own output goes to ``logger`` line by line; the progress of its shard jobs, if it has any,
    to a progress artifact (:class:`_Progress`). DVC's repository lock makes a second pipeline started
    meanwhile wait for each stage (``--wait-for-lock``), and it then finds the stage cached. ``timeout``: seconds after
    which its processes are killed. Raises :class:`StageFailed`.
    """
    logger = logger or logging.getLogger("sda.pipeline")
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage, *(["--force"] * force)]
    started = time.time()
    t0 = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    # text mode reads tqdm's carriage-return redraws as lines: one log line per redraw (every 10 s)
    progress = _Progress(Path(root), stage)
    progress.start()
    timed_out = threading.Event()
    # its own process group, so that a timeout (or this process being stopped) ends all of it
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="backslashreplace", start_new_session=True) as proc:
        if WATCH is not None:
            WATCH.stage, WATCH.proc = stage, proc
        watchdog = threading.Timer(timeout, lambda: (timed_out.set(), _kill_group(proc.pid))) if timeout else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in proc.stdout:
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                logger.info("%s", line)
        except BaseException:  # Ctrl-C or a cancel: the stage's group no longer hears the terminal
            _kill_group(proc.pid)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
    if WATCH is not None:
        WATCH.stage, WATCH.proc, WATCH.last_stage = None, None, stage
    progress.finish(proc.returncode == 0)
    run = StageRun.read(stage, Path(root), since=started)  # None: the stage's command did not run (cached) or was killed
    if proc.returncode != 0:
        err = StageFailed(stage, run.exit_status if run else None, "\n".join(tail),
                          timeout=timeout if timed_out.is_set() else None)
        logger.error("%s", err)
        raise err
    seconds = round(time.perf_counter() - t0, 1)
    state = "ran" if run else "cached (unchanged)"
    logger.info("stage %-18s %s in %.1f s", stage, state, seconds)
    return {"stage": stage, "ran": run is not None, "seconds": seconds, **_split_time(run, seconds)}




def _split_time(run: StageRun | None, seconds: float) -> dict:
    """The stage's ``work`` (its own record), the ``start_up`` of its process (imports, params) and the
    ``dvc`` rest of ``seconds``, when the stage ran in this call."""
    if run is None or run.work_seconds is None:
        return {}
    start_up = run.work_start - run.process_start
    return {"work": round(run.work_seconds, 1), "start_up": round(start_up, 1),
            "dvc": round(max(0.0, seconds - start_up - run.work_seconds), 1)}
