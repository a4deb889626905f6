"""The warm stage server (tasks/stage_server.py): a stage command run through it behaves as the same
command run on its own (output, exit status, signals, the bytes it writes), and it declines what it
could get wrong (changed code, another import-time environment)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import copy_repo, sh, subprocess_env
from tasks.stage_server import ENV

pytestmark = pytest.mark.slow


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# the same explicit OpenMP wait policy for the server and its commands, whatever the load of the
# machine when each starts (tasks/__init__ picks PASSIVE for a busy one)
POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = str(root / ".stage.sock")
        self.log = root / "server.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.stage_server", "--socket", self.address],
                                     cwd=root, env={**subprocess_env(), **POLICY}, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "ready" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the stage server did not get ready in 300 s"
            time.sleep(0.2)

    def run(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        """``python -m *args`` (or ``python *args`` when they hold their own ``-m``) through the server."""
        env = {ENV: self.address, **POLICY, **(env or {})}
        return sh(self.root, sys.executable, *([] if "-m" in args else ["-m"]), *args, check=check, env=env)

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("stage server:")]

    def logged(self, *parts: str, timeout: float = 30) -> bool:
        """Whether the server logs a line with all of ``parts`` within ``timeout`` s (it logs a command's
        end just after sending its status, so the line may follow the command's exit)."""
        deadline = time.monotonic() + timeout
        while not any(all(p in line for p in parts) for line in self.lines()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm") / "repo"
    root.mkdir()
    copy_repo(root, git=False)
    srv = Server(root)
    yield srv
    srv.proc.terminate()
    srv.proc.wait(10)


def test_a_stage_run_through_the_server_writes_the_same_bytes(server):
    sh(server.root, sys.executable, "-m", "tasks.source_data", env=POLICY)  # on its own (no server)
    alone = _tree_digest(server.root / "data" / "source_data")
    shutil.rmtree(server.root / "data" / "source_data")
    server.run("tasks.source_data")
    assert server.logged("tasks.source_data", "exit 0"), server.lines()
    assert _tree_digest(server.root / "data" / "source_data") == alone


def test_output_and_exit_status_are_the_commands(server):
    r = server.run("tasks.source_data", "--help")
    assert r.returncode == 0 and "usage: python -m tasks.source_data" in r.stdout
    r = server.run("tasks.source_data", "--params", "missing.yaml", check=False)
    assert r.returncode == 2 and "missing.yaml not found" in r.stderr
    assert "stage server" not in r.stderr  # it was not declined: it ran in the server
    assert server.logged("--params missing.yaml", "exit 2"), server.lines()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_command_ends_its_stage(server, sig):
    env = {**subprocess_env(), **POLICY, ENV: server.address, "SDA_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "tasks.diffusion_finetune"], cwd=server.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the stage is at work once it logs its set-up
        if "stage diffusion_finetune: device=" in line:
            break
    proc.send_signal(sig)
    assert proc.wait(60) == -sig  # SIGTERM forwarded: the child dies of it, and so does the command
    deadline = time.monotonic() + 30
    want = f"exit {-sig}" if sig == signal.SIGTERM else "killed: its command went away"
    while not any("tasks.diffusion_finetune" in line and want in line for line in server.lines()):
        assert time.monotonic() < deadline, server.lines()
        time.sleep(0.2)


def test_changed_code_or_environment_runs_the_command_on_its_own(server):
    r = server.run("tasks.source_data", "--help", env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert r.returncode == 0 and "import-time environment differs (OMP_WAIT_POLICY)" in r.stderr
    r = server.run("-W", "ignore", "-m", "tasks.source_data", "--help")
    assert r.returncode == 0 and "interpreter options differ (-W ignore)" in r.stderr
    module = server.root / "sda" / "io" / "images.py"
    text, st = module.read_text(), module.stat()
    module.write_text(text + "\n")
    try:
        r = server.run("tasks.source_data", "--help")
        assert r.returncode == 0 and "usage:" in r.stdout
        assert f"{module} changed since the server started; running in this process" in r.stderr
    finally:  # as it was, to the nanosecond: the module's other tests (any order) see it unchanged
        module.write_text(text)
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "stage server" not in server.run("tasks.source_data", "--help").stderr


def test_no_server_at_the_address_runs_the_command_on_its_own(tmp_path):
    r = sh(Path(__file__).resolve().parents[3], sys.executable, "-m", "tasks.source_data", "--help",
           env={ENV: str(tmp_path / "none.sock")})
    assert r.returncode == 0 and "usage:" in r.stdout


def test_the_server_stops_when_its_parent_is_gone(tmp_path):
    root = Path(__file__).resolve().parents[3]
    address = str(tmp_path / "s.sock")
    # a shell that starts the server as its child, then exits: the server must follow it
    parent = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -m tasks.stage_server --socket {address} '
                               f'--parent $$ > {tmp_path}/log 2>&1 & echo $! ; sleep 1'],
                              cwd=root, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    parent.wait(30)
    deadline = time.monotonic() + 300  # it finishes its imports first, then notices within ~1 s
    while True:
        try:  # gone, or a zombie nobody reaps yet
            if Path(f"/proc/{server_pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break
        except FileNotFoundError:
            break
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.5)


def test_the_server_knows_its_peer_and_bounds_a_request():
    import socket

    from tasks import stage_server as ss

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert ss.peer_uid(b) == os.getuid()  # what serve() compares before it forks for a request
        a.sendall(ss._HEADER.pack(ss.MAX_REQUEST_BYTES + 1))  # a 4 GiB-style header: refused unread
        with pytest.raises(ConnectionError, match="refused"):
            ss._recv_request(b)
    finally:
        a.close()
        b.close()


def test_a_child_gets_only_the_allowlisted_environment():
    from tasks import stage_server as ss

    env = {"PATH": "/usr/bin", "SDA_LOG_LEVEL": "DEBUG", "OMP_NUM_THREADS": "2", "LC_ALL": "C",
           "AWS_SECRET_ACCESS_KEY": "x", "LD_PRELOAD": "/tmp/evil.so", "PREFECT_API_AUTH_STRING": "sda:pw"}
    assert ss.child_env(env) == {"PATH": "/usr/bin", "SDA_LOG_LEVEL": "DEBUG", "OMP_NUM_THREADS": "2", "LC_ALL": "C"}
