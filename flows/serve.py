"""Run sda-pipeline as a local service: a Prefect server and, in this process, ``prefect.serve`` of
its deployments (``make serve``), in the foreground until Ctrl-C.

    python -m flows.serve                      # http://127.0.0.1:4200 (UI and API)
    python -m flows.serve --port 4300

The deployments are defined once, in :func:`deployments`, with the relabel period from
params.yaml (``relabel.interval_minutes``); served deployments need no work pool and no worker:
this process starts their runs. Then, in another shell (the command prints these lines with the
right URL)::

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    .venv/bin/prefect deployment run sda-pipeline/embedded --watch
    .venv/bin/prefect deployment run relabel/on-demand -p inbox=data/inbox/camera-7 --watch

The server keeps its database under ``$PREFECT_HOME`` (``.prefect/`` with the Makefile) and logs to
``.prefect/server.log``; the runs log to the server (the UI) and to this process's output.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flows.served import SERVED_ROOT_ENV
from sda.config import Params, ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def _prefect(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "prefect"), *args]


# the API's basic-auth credential ("user:password"), created once under PREFECT_HOME, owner-only
AUTH_FILE = "api-auth"


def api_credential(home: Path) -> str:
    """The served API's basic-auth credential ``sda:<random token>``: read from ``home/api-auth``,
    created there once (mode 0600, never overwritten)."""
    path = home / AUTH_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(f"sda:{secrets.token_urlsafe(24)}\n")
    if path.is_symlink() or path.stat().st_mode & 0o077:
        raise RuntimeError(f"{path} must be a file readable by its owner alone (chmod 600 {path})")
    return path.read_text().strip()


def wait_healthy(api_url: str, proc: subprocess.Popen, timeout: float = 180.0, auth: str | None = None) -> None:
    """Poll ``<api>/health`` until the server answers; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    basic = tuple(auth.split(":", 1)) if auth else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {proc.returncode}; see its log")
        try:
            if httpx.get(f"{api_url}/health", timeout=2, auth=basic).status_code == 200:
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


def deployments(params: Params, root: Path) -> list:
    """The deployments of sda-pipeline (``RunnerDeployment``), one run at a time each (a second one
    waits): ``sda-pipeline/<profile>`` for every registered domain, ``relabel/scheduled`` every
    ``relabel.interval_minutes`` and ``relabel/on-demand``. Imports Prefect: call it after the API
    URL is in the environment."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.pipeline import pipeline
    from flows.relabel_flow import drift_alert, relabel

    one = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    common = dict(concurrency_limit=one, parameters={"root": str(root)})
    from sda.domains import domain_names, get_domain

    pipelines = [pipeline.to_deployment(name, **{**common, "parameters": {"root": str(root), "profile": name}},
                                        description=f"The SDA pipeline, stage by stage through DVC (cached stages are "
                                                    f"skipped), on {get_domain(name).description}.",
                                        tags=["sda", "pipeline", name])
                 for name in domain_names()]
    return pipelines + [
        relabel.to_deployment(
            "scheduled", **{**common, "parameters": {"root": str(root), "wait_for_models": True}},
            interval=dt.timedelta(minutes=params.relabel.interval_minutes),
            description="Label the images that arrived in relabel.inbox since the last run (exactly once per "
                        "image); before the first pipeline run it finishes without labelling.",
            tags=["sda", "relabel"]),
        relabel.to_deployment(
            "on-demand", **common,
            description="Label an inbox now; parameters inbox (folder) and batch_size override params.yaml.",
            tags=["sda", "relabel"]),
        drift_alert.to_deployment(
            "on-drift", concurrency_limit=one,
            description="Started by the automation 'sda relabel drift' with the event's payload: the alert "
                        "artifact of a drifted relabel batch.",
            tags=["sda", "relabel", "alert"]),
    ]


DRIFT_AUTOMATION = "sda relabel drift"


def register_drift_automation(params: Params, root: Path, ids: dict[str, object]) -> object:
    """The automation that answers a drifted relabel batch of the checkout at ``root`` (the event
    ``sda.relabel.drift``): a run of ``relabel-drift-alert/on-drift`` with the event's payload and, with
    ``relabel.monitor.pause_on_drift``, ``relabel/scheduled`` paused. ``ids``: deployment (flow/name) -> id
    (``Runner.add_deployment``). Replaces the one an earlier ``make serve`` registered; returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.events.actions import PauseDeployment, RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from flows.relabel_flow import DRIFT_EVENT, checkout_resource

    payload = {"__prefect_kind": "json",  # the event's payload, rendered by the server, as the flow's `alert`
               "value": {"__prefect_kind": "jinja", "template": "{{ event.payload | tojson }}"}}
    actions = [RunDeployment(source="selected", deployment_id=ids["relabel-drift-alert/on-drift"],
                             parameters={"alert": payload, "root": str(root)})]
    if params.relabel.monitor.pause_on_drift:
        actions.append(PauseDeployment(source="selected", deployment_id=ids["relabel/scheduled"]))
    automation = AutomationCore(
        name=DRIFT_AUTOMATION, description=f"A relabel batch of {root} drifted (relabel.monitor): the alert artifact"
                                           + (", relabel/scheduled paused" if len(actions) > 1 else ""),
        trigger=EventTrigger(expect={DRIFT_EVENT}, match={"prefect.resource.id": checkout_resource(root)},
                             posture=Posture.Reactive, threshold=1),
        actions=actions)
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(DRIFT_AUTOMATION):
            if old.trigger.match == automation.trigger.match:  # this checkout's, from an earlier start
                client.delete_automation(old.id)
        return client.create_automation(automation)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--root", default=str(ROOT), help="repository root the runs use (default: this checkout)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = load_params(root / "params.yaml")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = service_env(args.host, args.port)
    os.environ.update(env)  # before Prefect is imported: this process talks to the new server
    inbox = root / params.relabel.inbox
    inbox.mkdir(parents=True, exist_ok=True)  # the scheduled relabel watches it from the start
    home = Path(env["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    # basic authentication on by default: set PREFECT_SERVER_API_AUTH_STRING=user:password for your own
    try:
        auth = env.get("PREFECT_SERVER_API_AUTH_STRING") or api_credential(home)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env.update(PREFECT_SERVER_API_AUTH_STRING=auth, PREFECT_API_AUTH_STRING=auth)
    env[SERVED_ROOT_ENV] = str(root)
    os.environ.update(env)
    server: subprocess.Popen | None = None
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    # Ctrl-C / SIGINT must stop the server even when this process was started with SIGINT ignored
    # (a background job of a non-interactive shell, e.g. a CI step): Python then keeps SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(home / "server.log", "ab") as server_log:
            print(f"starting the Prefect server on {env['PREFECT_API_URL']} (log: {home / 'server.log'})", flush=True)
            server = subprocess.Popen(_prefect("server", "start", "--host", args.host, "--port", str(args.port)),
                                      cwd=root, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            wait_healthy(env["PREFECT_API_URL"], server, auth=auth)
            from prefect.runner import Runner

            runner = Runner(pause_on_shutdown=True)
            served = deployments(params, root)
            ids = {f"{d.flow_name}/{d.name}": runner.add_deployment(d) for d in served}
            register_drift_automation(params, root, ids)
            print(f"""
ready. UI: http://{args.host}:{args.port}   serving {len(served)} deployments (runs start in this process)
in another shell:
    export PREFECT_API_URL={env['PREFECT_API_URL']}
    export PREFECT_API_AUTH_STRING="$(cat {home / AUTH_FILE})"   # the API asks for it (UI: the same string)
    {root / '.venv/bin/prefect'} deployment run sda-pipeline/embedded --watch
    {root / '.venv/bin/prefect'} deployment run sda-pipeline/imagenet --watch   # GPU; paths: params.yaml imagenet
    {root / '.venv/bin/prefect'} deployment run relabel/on-demand -p inbox=data/inbox/camera-7 --watch   # relabel.inbox or served_inboxes
new images dropped into {inbox} are labelled every {params.relabel.interval_minutes:g} min (data/labels/);
a drifted batch raises the artifact relabel-drift{' and pauses relabel/scheduled' if params.relabel.monitor.pause_on_drift else ''} (automation '{DRIFT_AUTOMATION}').
Ctrl-C stops serving and the server.""", flush=True)
            asyncio.run(runner.start())
            return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
