"""The resumable, distributed shard machinery (sda.io.resumable_jobs) with real models and real dask."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support import free_port
from sda.io.resumable_jobs import PlanMismatchError, plan_jobs, run_shard_jobs
from sda.io.shards import load_shards, read_manifest
from sda.method.synth import generate_job, plan_row, sample_plan
from sda.models.diffusion import DiffusionInfo, build_unet, save_diffusion
from sda.models.schedulers import ddpm_scheduler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    unet = build_unet(16, 3, (8, 16), 1, (False, True), 4).eval()
    d = tmp_path_factory.mktemp("m") / "diffusion"
    save_diffusion(d, unet, ddpm_scheduler(), DiffusionInfo(num_classes=3, null_label=3))
    return str(d)


def _make(model_dir):
    return functools.partial(generate_job, model_dir=model_dir, seed=7, steps=3, guidance_scale=1.0, batch_size=4)


def _shas(d: Path) -> list[tuple[str, str]]:
    return [(s["name"], s["sha256"]) for s in read_manifest(d)["shards"]]


def test_plan_is_balanced_deterministic_and_contiguous():
    jobs = plan_jobs(23, 10, "synth")
    assert [(j.name, j.start, j.stop) for j in jobs] == [
        ("synth-000000.tar", 0, 10), ("synth-000001.tar", 10, 20), ("synth-000002.tar", 20, 23)]
    plan = sample_plan(range(3), 4, seed=5).to_pylist()
    assert [r["class"] for r in plan] == [0, 1, 2] * 4
    assert plan == sample_plan(range(3), 4, seed=5).to_pylist()
    assert plan[7] == plan_row(7, range(3), 5)
    assert len({r["seed"] for r in plan}) == 12 and len({r["key"] for r in plan}) == 12


@pytest.mark.slow
def test_in_process_and_two_dask_workers_write_identical_shards(model_dir, tmp_path):
    jobs = plan_jobs(18, 5, "synth")
    t0 = time.perf_counter()
    a = run_shard_jobs(tmp_path / "a", jobs, _make(model_dir), plan={"p": 1}, workers=0)
    in_process = time.perf_counter() - t0
    b = run_shard_jobs(tmp_path / "b", jobs, _make(model_dir), plan={"p": 1}, workers=2)
    assert a["shards"] == b["shards"] == 4
    assert _shas(tmp_path / "a") == _shas(tmp_path / "b")
    got = load_shards(tmp_path / "b")
    assert got.keys == [f"synth-{i:07d}" for i in range(18)]
    assert got.labels.tolist() == [i % 3 for i in range(18)]
    m = read_manifest(tmp_path / "b")
    assert m["count"] == 18 and m["classes"] == {"0": 6, "1": 6, "2": 6}
    assert all("seconds" not in s for s in m["shards"])  # content only: timings are in the summary
    # per-shard timings are measured, not made up: each is positive and in one process they add up to
    # at most the wall time (which shard is fastest depends on the machine's load: not asserted)
    assert set(a["shard_seconds"]) == set(b["shard_seconds"]) == {j.name for j in jobs}
    secs = a["shard_seconds"]
    assert all(v > 0 for v in secs.values()) and sum(secs.values()) <= in_process


@pytest.mark.slow
def test_projection_shards_are_identical_in_process_and_on_two_workers(model_dir, tmp_path):
    """The projection's backward (resize_right's gather) is only reproducible with deterministic
    algorithms, which are per process: each job sets them where it runs."""
    from sda.config import Projection
    from sda.method.projector import project_job, projection_jobs

    # batches of 64 at 16 px: big enough for torch to split the gather's backward over threads
    src = functools.partial(generate_job, model_dir=model_dir, seed=7, steps=2, guidance_scale=1.0, batch_size=64)
    run_shard_jobs(tmp_path / "src", plan_jobs(128, 64, "synth"), src, plan={}, workers=0)
    make = functools.partial(project_job, model_dir=model_dir, src_root=str(tmp_path / "src"), seed=3,
                             projection=Projection(respacing=10, N=4, D=4, scale=6.0, batch_size=64))
    jobs = projection_jobs(tmp_path / "src", [""])
    a = run_shard_jobs(tmp_path / "a", jobs, make, plan={}, workers=0, threads=2, deterministic=True)
    b = run_shard_jobs(tmp_path / "b", jobs, make, plan={}, workers=2, deterministic=True)
    assert _shas(tmp_path / "a") == _shas(tmp_path / "b")
    # the work each job counted comes back from the workers too: 4 guided steps x (forward + backward)
    assert a["stats"] == b["stats"] == {"images": 128, "forwards": 512, "backwards": 512}
    assert load_shards(tmp_path / "b").keys == load_shards(tmp_path / "src").keys
    assert (load_shards(tmp_path / "b").images != load_shards(tmp_path / "src").images).any()


def test_tampered_and_missing_shards_are_redone(model_dir, tmp_path):
    jobs = plan_jobs(12, 4, "synth")
    run_shard_jobs(tmp_path, jobs, _make(model_dir), plan={}, workers=0)
    reference = _shas(tmp_path)
    (tmp_path / "synth-000001.tar").write_bytes((tmp_path / "synth-000001.tar").read_bytes()[:-600])  # truncated
    (tmp_path / "synth-000002.tar").unlink()  # missing
    (tmp_path / ".synth-000000.tar.tmp-123").write_bytes(b"half a shard")  # a killed writer's leftover
    summary = run_shard_jobs(tmp_path, jobs, _make(model_dir), plan={}, workers=0)
    assert summary["resumed_shards"] == 1
    assert _shas(tmp_path) == reference
    assert not list(tmp_path.glob("*.tmp-*"))


def test_other_plan_is_refused_not_mixed(model_dir, tmp_path):
    jobs = plan_jobs(4, 2, "synth")
    run_shard_jobs(tmp_path, jobs, _make(model_dir), plan={"per_class": 1}, workers=0)
    before = _shas(tmp_path)
    with pytest.raises(PlanMismatchError, match="another plan.*refusing to mix"):
        run_shard_jobs(tmp_path, jobs, _make(model_dir), plan={"per_class": 2}, workers=0)
    assert _shas(tmp_path) == before
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert len(progress["shards"]) == 2


@pytest.fixture
def dask_cluster():
    """A real ``dask scheduler`` and two worker processes on 127.0.0.1, started the way docs/scale.md
    tells users to: ``python -m sda.io.dask_worker ADDRESS --nworkers 2 --nthreads 1``."""
    port = free_port()
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[4])}
    sched = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "sda.io.dask_worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2",
                               "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        for p in (worker, sched):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_replaced_and_the_set_is_identical(model_dir, tmp_path, dask_cluster):
    """kill -9 of one worker process while it writes a shard: the scheduler re-runs that job on a
    worker that lives, the run finishes, and the set is the in-process set (no key twice, no
    temporary left)."""
    import signal
    import threading

    from distributed import Client

    from sda.io.cluster import DASK_WORKER_CONFIG, worker_settings

    make = functools.partial(generate_job, model_dir=model_dir, seed=7, steps=40, guidance_scale=1.0, batch_size=3)
    jobs = plan_jobs(30, 3, "synth")  # 10 shards of ~1 s each
    with Client(dask_cluster, timeout="60s") as c:
        c.wait_for_workers(2, timeout=90)
        pids = c.run(os.getpid)
        assert list(c.run(worker_settings).values()) == [DASK_WORKER_CONFIG] * 2  # the fast settings
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            run_shard_jobs(tmp_path / "remote", jobs, make, plan={}, scheduler=dask_cluster)))
        runner.start()
        victim = None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline and runner.is_alive():
            busy = [w for w, keys in c.processing().items() if keys]
            # a worker that is writing a shard (its temporary exists) and is not the last job's
            if busy and list((tmp_path / "remote").glob("*.tmp-*")):
                victim = busy[0]
                os.kill(pids[victim], signal.SIGKILL)
            time.sleep(0.02)
        assert victim is not None, "no worker was seen busy: the jobs are too short to kill one mid-job"
        runner.join(timeout=300)
        assert not runner.is_alive() and result["new_items"] == 30
        c.wait_for_workers(2, timeout=90)  # the nanny restarted the killed process
        assert pids[victim] not in c.run(os.getpid).values()
    run_shard_jobs(tmp_path / "local", jobs, make, plan={}, workers=0)
    assert _shas(tmp_path / "remote") == _shas(tmp_path / "local")
    keys = load_shards(tmp_path / "remote").keys
    assert keys == [f"synth-{i:07d}" for i in range(30)] and len(set(keys)) == 30
    assert not list((tmp_path / "remote").rglob("*.tmp-*"))


def test_an_unreachable_scheduler_fails_within_the_timeout_naming_the_address(model_dir, tmp_path):
    import dask
    import distributed  # noqa: F401 - its config defaults must exist before dask.config.set overrides one

    from sda.io.cluster import SchedulerUnreachableError

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(SchedulerUnreachableError, match=f"{address} within 2s.*dask scheduler"):
            run_shard_jobs(tmp_path, plan_jobs(4, 2, "synth"), _make(model_dir), plan={}, scheduler=address)
    assert time.perf_counter() - t0 < 30
    assert not list(tmp_path.rglob("*.tar")) and not (tmp_path / "manifest.json").exists()
