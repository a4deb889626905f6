"""A warm start for the stage commands: one process imports what the stages import once, then forks
a fresh child for each ``python -m tasks.<stage>`` command.

Each stage process would otherwise spend 5-10 s of a 2-core machine importing torch, diffusers and
timm before its first line of work (docs/reproducibility.md). The pipeline flow (flows/pipeline.py) starts
this server and points ``SDA_STAGE_SERVER`` at its socket for the ``dvc repro`` it runs. DVC still
runs every stage's own command; that process (``tasks/__init__``) sends its module, arguments,
working directory, environment (the allowlisted part: ``FORWARDED_ENV``) and standard streams here
instead of importing anything heavy, forwards SIGINT / SIGTERM / SIGHUP to the child, and exits with the child's status (a child killed
by signal N: killed by N too). The child runs the same ``__main__`` as the command would, so the
outputs are the same bytes; each command gets its own fork of the freshly imported server, so no
state (caches, RNG, CUDA, threads) passes from one stage to the next, and a crashing stage takes
only its child down. A command whose process is killed takes its child with it.

The server declines a command, which then runs in its own process as without a server, when the
answer could differ: another checkout's ``tasks`` package, a project module changed since the server
imported it, or a different value of a variable that is read at import time (``OMP_*``: the OpenMP
wait policy ``tasks/__init__`` picks for a busy machine; ``TQDM_*``, ``PYTHON*``, ``TORCH_*``, ...).

    python -m tasks.stage_server --socket /tmp/sda-stages/stage.sock   # prints "ready <pid>" when warm
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from tasks.launch import (ENV, FORWARDED_ENV, IMPORT_TIME_ENV, MAX_REQUEST_BYTES, _HEADER,  # noqa: F401 (re-exported)
                          _import_time_env, _interpreter_options, child_env, exit_like, run_via_server)

def _project_modules() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every loaded module of this project (``sda``, ``tasks``)."""
    out = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if path and name.split(".")[0] in ("sda", "tasks"):
            st = os.stat(path)
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(min(1 << 20, n - len(data)))
        if not chunk:
            raise ConnectionError("request cut short")
        data += chunk
    return bytes(data)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)  # the fds come with the first bytes
    (n,) = _HEADER.unpack(head + _recv_exact(conn, _HEADER.size - len(head)))
    if n > MAX_REQUEST_BYTES:
        for fd in fds:
            os.close(fd)
        raise ConnectionError(f"request of {n} bytes refused (limit {MAX_REQUEST_BYTES})")
    return json.loads(_recv_exact(conn, n)), list(fds)


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of the Unix socket ``conn`` (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _declined(req: dict, modules: dict[str, tuple[int, int]], env: dict[str, str]) -> str | None:
    here = str(Path(__file__).resolve().parent)
    if req["tasks"] != here:
        return f"its tasks package is {req['tasks']}, the server's is {here}"
    if req["prefix"] != sys.prefix:
        return f"its Python environment is {req['prefix']}, the server's is {sys.prefix}"
    if req["options"] != _interpreter_options():
        return f"interpreter options differ ({' '.join(req['options']) or 'none'})"
    theirs = _import_time_env(req["env"])
    if theirs != env:
        keys = sorted({k for k, _ in set(theirs.items()) ^ set(env.items())})
        return f"import-time environment differs ({', '.join(keys)})"
    for path, stamp in modules.items():
        try:
            st = os.stat(path)
        except OSError:
            return f"{path} is gone"
        if (st.st_mtime_ns, st.st_size) != stamp:
            return f"{path} changed since the server started"
    module = req["module"]
    if not module.startswith("tasks."):
        return f"{module} is not a stage module"
    return None


def _run_child(req: dict, fds: list[int]) -> None:
    """In the forked child: become the command's process, run its ``__main__``, exit. Never returns."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(child_env(req["env"]))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        from tasks import launch

        launch.STARTED = req["started"]  # the stage's start-up is timed from its command's start
        sys.argv = [req["module"], *req["argv"]]
        # run as a command would: its module executes as __main__, not the copy the server imported
        sys.modules.pop(req["module"], None)
        try:
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as err:
            if err.code is None or isinstance(err.code, int):
                code = err.code or 0
            else:
                print(err.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:  # noqa: BLE001 - reported as the interpreter would, then exit 1
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        exit_like(code)


def _supervise(conn: socket.socket, modules: dict[str, tuple[int, int]], env: dict[str, str]) -> None:
    """In a forked supervisor: read one request, fork the command's child, relay its pid and exit
    status; kill it if the command's process goes away first."""
    req, fds = _recv_request(conn)
    reason = _declined(req, modules, env)
    if reason:
        conn.sendall(json.dumps({"declined": reason}).encode() + b"\n")
        return
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_child(req, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        ready, _, _ = select.select([conn], [], [], 0.05)
        if ready and not conn.recv(1):  # the command was killed: so is its stage
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print(f"stage server: {req['module']} (pid {pid}) killed: its command went away", flush=True)
            return
    code = os.waitstatus_to_exitcode(status)
    # logged before the command learns its status: whoever reads the log after it exits finds the line
    print(f"stage server: {req['module']} {' '.join(req['argv'])} (pid {pid}) exit {code} "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    conn.sendall(json.dumps({"status": code}).encode() + b"\n")


def preload() -> None:
    """Import every stage module, and with them what they import (torch, diffusers, timm, ...)."""
    from tasks import STAGES

    for stage in STAGES:
        importlib.import_module(f"tasks.{stage}")


def serve(address: str, parent: int | None = None) -> None:
    """Accept commands on the Unix socket ``address`` until killed, or until ``parent`` is gone.

    Forks only from this single-threaded loop (a supervisor per command, which forks the command's
    child), so no lock held by another thread is ever copied into a child."""
    env = _import_time_env(dict(os.environ))  # before the imports, some of which set variables
    preload()
    modules = _project_modules()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    print(f"ready {os.getpid()}", flush=True)
    while parent is None or os.getppid() == parent:
        ready, _, _ = select.select([listener], [], [], 1.0)
        if not ready:
            continue
        conn, _ = listener.accept()
        if peer_uid(conn) != os.getuid():  # the socket's folder is private; this is the second wall
            print(f"stage server: refused a connection from user {peer_uid(conn)}", flush=True)
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _supervise(conn, modules, env)
            except Exception:  # noqa: BLE001 - a bad request must not take the server down
                traceback.print_exc()
            finally:
                os._exit(0)
        conn.close()
    listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.stage_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on (must not exist)")
    parser.add_argument("--parent", type=int, help="exit when this process id is no longer the parent")
    args = parser.parse_args()
    serve(args.socket, args.parent)


if __name__ == "__main__":
    main()
