"""flows.stage_process.ServerWatch against a port nothing listens on: one line, then it waits for the running
stage's process to end before it ends the run with status 3 (the stage writes into the run's pipe)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_a_dead_server_ends_the_run_in_one_line_once_the_stage_has_ended():
    code = textwrap.dedent(f"""
        import subprocess, sys
        sys.path.insert(0, {str(ROOT)!r})
        from flows.stage_process import ServerWatch
        watch = ServerWatch("http://127.0.0.1:{free_port()}/api", every=0.2, grace=0.5)
        watch.stage, watch.proc = "target_project", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
        watch.start()
        watch.join(60)
        print("not reached")
    """)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 3 and "not reached" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: the Prefect server (http://127.0.0.1:"), r.stderr
    assert "during stage target_project: the stage keeps running under DVC" in lines[0]
    assert time.monotonic() - t0 >= 3  # it waited for the stage
