"""How a stage command starts (``python -m tasks.<stage>``), before anything heavy is imported:
with the project's python, progress bars redrawn for a log, OpenMP's passive waits on a busy
machine, and through the warm stage server when one is running (:mod:`tasks.stage_server`; this
module is its client).

None of it changes what a stage computes (the same bytes cold, warm, busy or idle; the tests check
each), so neither this module nor the server is a code dependency of any stage
(``tasks.code_deps.NOT_CODE_DEPS``): a change to how stages are run leaves ``dvc.lock`` as it is.
``tasks/__init__.py`` makes the one call, :func:`prepare_command`; importing ``tasks`` as a library
(a notebook, the flow, the tests) changes nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import MutableMapping

STARTED = time.time()  # the stage process's start, near enough: its start-up cost is measured from here

# What every stage imports; checked by name (cheap) before anything heavy is imported.
_REQUIRED = ("torch", "torchvision", "diffusers", "timm", "webdataset", "pydantic", "yaml")

def _run_with_project_python() -> None:
    """DVC runs ``python -m tasks.<stage>`` through the shell, so ``dvc repro`` from outside the
    activated venv would run the stages with whatever ``python`` is first on PATH. When that one
    lacks the project's packages, re-run the same command with the repository's ``.venv`` python
    (what ``make install`` creates), or exit 2 with what to do. The nearest ``.venv`` above this file
    counts: a queued DVC experiment runs in a copy under ``<repo>/.dvc/tmp/exps/``, without its own."""
    missing = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    here = Path(__file__).resolve().parents[1]
    # this checkout, or the one whose queued experiment this copy is (<repo>/.dvc/tmp/exps/<copy>)
    homes = [here, *(p.parents[2] for p in here.parents if p.name == "exps" and p.parent.name == "tmp"
                     and p.parent.parent.name == ".dvc")]
    venv_python = next((h / ".venv" / "bin" / "python" for h in homes if (h / ".venv" / "bin" / "python").is_file()),
                       here / ".venv" / "bin" / "python")
    if venv_python.is_file() and not os.environ.get("SDA_REEXEC"):
        os.environ["SDA_REEXEC"] = "1"  # once: a broken venv must not loop
        os.execv(venv_python, [str(venv_python), *sys.orig_argv[1:]])
    print(f"error: {sys.executable} lacks {', '.join(missing)}: the stages need the project's environment. "
          f"Run `make install` (creates .venv), then `.venv/bin/dvc repro` or `source .venv/bin/activate`; "
          "or `pip install -e .` into this interpreter's environment.", file=sys.stderr)
    raise SystemExit(2)


ENV = "SDA_STAGE_SERVER"
# read when a library is imported, so the server's values hold for every child
IMPORT_TIME_ENV = ("OMP_", "KMP_", "MKL_", "OPENBLAS_", "TQDM_", "PYTHON", "TORCH", "PYTORCH_", "CUDA_",
                   "DIFFUSERS_", "HF_", "TIMM_")
# what a child takes from its command's environment besides IMPORT_TIME_ENV (which must equal the
# server's): the variables the stages, DVC and the standard library read; nothing else reaches a child
FORWARDED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_", "TZ", "TMPDIR", "TERM", "COLUMNS", "LINES",
                 "NO_COLOR", "FORCE_COLOR", "SDA_", "DVC", "DASK_", "MPL", "VIRTUAL_ENV")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HEADER = struct.Struct("!I")
# a request is a module name, argv, cwd and the environment: far below this (a larger one is refused)
MAX_REQUEST_BYTES = 16 << 20


def _import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a child runs with: the allowlisted part of its command's (``FORWARDED_ENV``,
    ``IMPORT_TIME_ENV``); anything else a same-user client sends is dropped."""
    allowed = FORWARDED_ENV + IMPORT_TIME_ENV
    return {k: v for k, v in env.items() if k.startswith(allowed) and isinstance(v, str)}


def _interpreter_options() -> list[str]:
    """This interpreter's command-line options (``-X ...``, ``-W ...``, ``-O``): what precedes ``-m``."""
    argv = sys.orig_argv
    return argv[1:argv.index("-m")] if "-m" in argv else argv[1:]


def _open_fds() -> list[int]:
    """fds 0, 1, 2 of this process; /dev/null for any that is closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def run_via_server(address: str, module: str, argv: list[str], started: float) -> int | None:
    """Run ``python -m <module> <argv>`` in a child of the server at ``address``; its exit status
    (negative: the signal that killed it), or ``None`` when the server is not reachable or declines
    (the caller then runs the command itself). Imports nothing heavy."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
        req = json.dumps({"module": module, "argv": argv, "cwd": os.getcwd(), "env": child_env(dict(os.environ)),
                          "started": started, "tasks": str(Path(__file__).resolve().parent),
                          "prefix": sys.prefix, "options": _interpreter_options()}).encode()
        data = _HEADER.pack(len(req)) + req
        sent = socket.send_fds(conn, [data], _open_fds())
        conn.sendall(data[sent:])
        replies = conn.makefile("rb")
        hello = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if "pid" not in hello:
        print(f"stage server: {hello.get('declined', 'no answer')}; running in this process", file=sys.stderr)
        conn.close()
        return None
    pid = hello["pid"]
    for sig in _FORWARDED:
        signal.signal(sig, lambda s, _frame: os.kill(pid, s))
    line = replies.readline()  # a forwarded signal does not interrupt it (PEP 475)
    if not line:
        print(f"error: the stage server went away while running {module} (pid {pid})", file=sys.stderr)
        return 1
    return int(json.loads(line)["status"])


def exit_like(status: int) -> None:
    """Leave this process as the child did: ``exit(status)``, or killed by the same signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if status >= 0 else 128 - status)


# ---------------------------------------------------------------------------------------------- server


def choose_wait_policy(env: MutableMapping[str, str] = os.environ) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` in ``env`` when cores are busy now and no policy is set.

    runtime.threads is fixed (the bytes depend on it), so a stage may start with fewer idle cores
    than threads; OpenMP's spinning waits then make training 3-12x slower (docs/method.md, "The
    embedded domain"). Passive waits cost ~15 % on an idle machine and remove that; same bytes either
    way. OpenMP reads it when torch loads, so it is set before. An explicit OMP_WAIT_POLICY wins. The
    flow calls this before it starts a stage server and DVC, so that both share the choice."""
    from sda.cores import busy_cores  # the standard library only

    if "OMP_WAIT_POLICY" not in env and busy_cores():
        env["OMP_WAIT_POLICY"] = "PASSIVE"


def _stage_module() -> str:
    """``tasks.<name>`` when this process is ``python [options] -m tasks.<name>``, else ``""``."""
    return sys.orig_argv[sys.orig_argv.index("-m") + 1] if "-m" in sys.orig_argv[:-1] else ""


def prepare_command() -> None:
    """Set up a stage command's process; a no-op unless it runs as ``python -m tasks.<name>``.

    Runs before any project module that imports torch, tqdm or OpenMP: each setting here is read
    at their import. A stage command (``sda.layout.STAGE_ORDER``) with ``SDA_STAGE_SERVER`` set is handed to
    the server and this process exits as its child did; when the server declines, it goes on and
    runs the stage itself."""
    module = _stage_module()
    if not module.startswith("tasks."):  # a library import: nothing to do
        return
    _run_with_project_python()
    # Under DVC / Prefect / CI stderr is a log, not a terminal: redraw progress bars every 10 s
    # rather than many times a second (tqdm reads TQDM_* at import time).
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    # The stage server keeps the policy of the environment it was started with (the flow picks it
    # then, choose_wait_policy): a command that picks PASSIVE here differs from it, and so runs in
    # its own process.
    if module != "tasks.stage_server":
        choose_wait_policy()
    from sda.layout import STAGE_ORDER  # the project's packages are there now (after the re-exec check)

    if module in {f"tasks.{s}" for s in STAGE_ORDER} and os.environ.get(ENV):
        args = sys.orig_argv[sys.orig_argv.index("-m") + 2:]
        status = run_via_server(os.environ[ENV], module, args, STARTED)
        if status is not None:
            exit_like(status)
