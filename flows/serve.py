"""Run sda-pipeline as a local service: a Prefect server, the process work pool, the deployments of
``prefect.yaml`` and a worker, in the foreground until Ctrl-C (``make serve``).

    python -m flows.serve                      # http://127.0.0.1:4200 (UI and API)
    python -m flows.serve --port 4300

Then, in another shell (the command prints these lines with the right URL)::

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    .venv/bin/prefect deployment run sda-pipeline/embedded --watch
    .venv/bin/prefect deployment run relabel/on-demand -p inbox=/path/to/images --watch

The server keeps its database under ``$PREFECT_HOME`` (``.prefect/`` with the Makefile); its log
and the worker's go to ``.prefect/server.log`` and ``.prefect/worker.log``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from sda.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]
POOL = "sda-process"


def _prefect(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "prefect"), *args]


def wait_healthy(api_url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll ``<api>/health`` until the server answers; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {proc.returncode}; see its log")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not answer at {api_url} within {timeout:.0f} s")


def service_env(host: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_API_URL"] = f"http://{host}:{port}/api"
    env.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sda")  # our library's log lines reach the UI
    return env


def render_deployments(root: Path, interval_minutes: float, home: Path) -> Path:
    """``prefect.yaml`` with every interval schedule set to ``interval_minutes`` (params.yaml is the
    one source of the relabel period), written to ``<home>/prefect.deploy.yaml``."""
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    for d in spec.get("deployments", []):
        for sched in d.get("schedules") or []:
            if "interval" in sched:
                sched["interval"] = max(1, round(interval_minutes * 60))
    out = home / "prefect.deploy.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def deploy(env: dict[str, str], root: Path, interval_minutes: float) -> None:
    """Create the process work pool (idempotent) and every deployment of ``prefect.yaml``."""
    rendered = render_deployments(root, interval_minutes, Path(env["PREFECT_HOME"]))
    for cmd in (_prefect("work-pool", "create", POOL, "--type", "process", "--overwrite"),
                _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(rendered))):
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--root", default=str(ROOT), help="repository root to deploy (default: this checkout)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = load_params(root / "params.yaml")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = service_env(args.host, args.port)
    inbox = root / params.relabel.inbox
    inbox.mkdir(parents=True, exist_ok=True)  # the scheduled relabel watches it from the start
    home = Path(env["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    # Ctrl-C / SIGINT must stop the children even when this process was started with SIGINT ignored
    # (a background job of a non-interactive shell, e.g. a CI step): Python then keeps SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(home / "server.log", "ab") as server_log, open(home / "worker.log", "ab") as worker_log:
            print(f"starting the Prefect server on {env['PREFECT_API_URL']} (log: {home / 'server.log'})", flush=True)
            procs.append(subprocess.Popen(_prefect("server", "start", "--host", args.host, "--port", str(args.port)),
                                          cwd=root, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            wait_healthy(env["PREFECT_API_URL"], procs[0])
            print(f"deploying prefect.yaml (work pool {POOL}; relabel every {params.relabel.interval_minutes:g} min)",
                  flush=True)
            deploy(env, root, params.relabel.interval_minutes)
            procs.append(subprocess.Popen(_prefect("worker", "start", "--pool", POOL, "--type", "process"),
                                          cwd=root, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            print(f"""
ready. UI: http://{args.host}:{args.port}   worker log: {home / 'worker.log'}
in another shell:
    export PREFECT_API_URL={env['PREFECT_API_URL']}
    {root / '.venv/bin/prefect'} deployment run sda-pipeline/embedded --watch
    {root / '.venv/bin/prefect'} deployment run sda-pipeline/imagenet --watch   # GPU; paths: params.yaml imagenet
    {root / '.venv/bin/prefect'} deployment run relabel/on-demand -p inbox=/path/to/images --watch
new images dropped into {inbox} are labelled every {params.relabel.interval_minutes:g} min (data/labels/).
Ctrl-C stops the worker and the server.""", flush=True)
            while all(p.poll() is None for p in procs):
                time.sleep(1)
            dead = [p for p in procs if p.poll() is not None]
            print(f"error: {dead[0].args[1]} exited with status {dead[0].returncode}; see the logs", file=sys.stderr)
            return 1
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        stop()


if __name__ == "__main__":
    raise SystemExit(main())
