"""The Prefect server killed while the pipeline flow runs a stage: the flow notices within 30 s, says so in
one line, exits with status 3 and no traceback; the stage, under DVC, finishes and is recorded, so a
re-run finds everything cached and the outputs are the same bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from sda.io.shards import read_manifest
from tests.support import sh, subprocess_env

pytestmark = pytest.mark.slow


def _pump(stream, lines: list[tuple[float, str]]) -> threading.Thread:
    def run() -> None:
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _server_of(pid: int) -> psutil.Process | None:
    """The temporary Prefect server the flow process ``pid`` started (a child running uvicorn)."""
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "uvicorn" in cmd or "prefect.server" in cmd:
            return child
    return None


def _shards(out: Path) -> list[tuple[str, str, str]]:
    return sorted((d.name, s["name"], s["sha256"]) for d in out.iterdir() if d.is_dir()
                  for s in read_manifest(d)["shards"])


def test_a_killed_prefect_server_ends_the_flow_in_one_line_and_the_stage_is_kept(tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    reference = _shards(repo / "data" / "target_project")
    env = {**subprocess_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
           "PREFECT_LOGGING_EXTRA_LOGGERS": "sda", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}
    env.pop("PREFECT_API_URL", None)  # the flow starts its own temporary server, as `make run` does
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--root", str(repo), "--stages", "target_project",
                             "--force"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[tuple[float, str]] = []
    err: list[tuple[float, str]] = []
    pumps = [_pump(proc.stdout, out), _pump(proc.stderr, err)]
    deadline = time.monotonic() + 400
    while not any("Running stage 'target_project'" in line for _, line in out + err):
        assert proc.poll() is None and time.monotonic() < deadline, "\n".join(line for _, line in out + err)[-3000:]
        time.sleep(0.2)
    server = _server_of(proc.pid)
    assert server is not None, "no temporary Prefect server under the flow's process"
    killed = time.monotonic()
    server.kill()
    code = proc.wait(timeout=400)
    for p in pumps:
        p.join(10)
    text = "\n".join(line for _, line in err)
    gone = [(t, line) for t, line in err if "the Prefect server" in line and "stopped answering" in line]
    assert code == 3 and len(gone) == 1, text[-3000:]
    assert gone[0][0] - killed <= 30, gone[0][0] - killed
    assert "Traceback" not in text and "Finished in state" not in text, text[-3000:]
    assert "run the pipeline again (or `dvc repro`)" in gone[0][1]
    status = sh(repo, sys.executable, "-m", "dvc", "status", "target_project")
    assert "up to date" in status.stdout, status.stdout  # DVC recorded the stage the dead server's run started
    assert _shards(repo / "data" / "target_project") == reference
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
