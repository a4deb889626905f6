"""The pipeline flow over real DVC stages that fail: a user error fails the flow run with the
stage's own message (an artifact too; the CLI exits 2 with it) and is not retried, a crash is retried
once, a stage past its runtime.stage_timeouts is killed, shard jobs publish their progress, and a second
run started while DVC's lock is held waits for it instead of failing."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a Prefect test server

# Stage commands of a small DVC repo under the pipeline's stage names, each a stage of ours (tasks.common.stage_main:
# its exit status and timing recorded for the flow) whose body appends to attempts.txt
USER_ERROR = "data/raw/cat.png is not an image: replace or remove it"
STAGE = "import json, os, time\nfrom tasks.common import stage_main\n\ndef body(params, args):\n{}\nstage_main({!r}, 'a test stage', body)\n"
SCRIPTS = {
    "user_error.py": STAGE.format(f"    open('attempts.txt', 'a').write('x')\n    raise ValueError({USER_ERROR!r})", "source_data"),
    "slow.py": STAGE.format("    open('attempts.txt', 'a').write('x')\n    print('working', flush=True)\n    time.sleep(600)",
                            "diffusion_finetune"),
    # writes the progress file of resumable shard jobs (sda.io.resumable_jobs) as a stage's plan goes on
    "shards.py": STAGE.format("    os.makedirs('data/.work/synth_generate-ab', exist_ok=True)\n"
                              "    for i in range(4):\n"
                              "        json.dump({'jobs': 4, 'shards': {str(k): {} for k in range(i + 1)}},\n"
                              "                  open('data/.work/synth_generate-ab/progress.json', 'w'))\n"
                              "        print('shard', i, flush=True)\n        time.sleep(2.5)", "synth_generate"),
    # a crash: no exit status of its own, retried once
    "flaky.py": STAGE.format("    open('attempts.txt', 'a').write('x')\n"
                             "    if not os.path.exists('crashed'):\n        open('crashed', 'w').close()\n        os.abort()\n"
                             "    open('model.txt', 'w').write('ok')", "source_model"),
}


@pytest.fixture
def dvc_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, code in SCRIPTS.items():
        (repo / name).write_text(code)
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "data").mkdir()  # a checkout: where a stage records its run
    run = f"PYTHONPATH={ROOT} python"
    stages = {"source_data": {"cmd": f"{run} user_error.py"},
              "source_model": {"cmd": f"{run} flaky.py", "deps": ["flaky.py"], "outs": ["model.txt"]},
              "diffusion_finetune": {"cmd": f"{run} slow.py"},
              "synth_generate": {"cmd": f"{run} shards.py"}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, timeout=120)
    return repo


def test_a_user_error_fails_the_run_with_the_stage_message_and_no_retry(dvc_repo, prefect_server):
    from flows.pipeline import pipeline

    state = pipeline(root=str(dvc_repo), stages=["source_data"], return_state=True)
    assert state.is_failed()
    assert USER_ERROR in state.message and "exit status 2" in state.message
    assert (dvc_repo / "attempts.txt").read_text() == "x"  # not retried


def test_a_crashed_stage_is_retried_once(dvc_repo, prefect_server):
    from flows.pipeline import pipeline

    result = pipeline(root=str(dvc_repo), stages=["source_model"])
    assert (dvc_repo / "attempts.txt").read_text() == "xx" and (dvc_repo / "model.txt").read_text() == "ok"
    r = result["stages"][0]
    assert len(result["stages"]) == 1 and (r["stage"], r["ran"]) == ("source_model", True)
    assert r["wall"] >= r["seconds"] + 5  # the failed try and the 5 s retry delay are Prefect's share
    assert r["work"] >= 0 and r["start_up"] > 0  # the second try's record: the first, killed, left none


def test_a_second_run_waits_for_the_dvc_lock(dvc_repo, prefect_server):
    from dvc.repo import Repo

    from flows.pipeline import pipeline

    (dvc_repo / "crashed").touch()  # no crash: this test is about the lock
    done: list[dict] = []
    with Repo(str(dvc_repo)) as repo, repo.lock:  # another DVC process at work
        runner = threading.Thread(target=lambda: done.append(pipeline(root=str(dvc_repo), stages=["source_model"])))
        runner.start()
        time.sleep(8)
        assert runner.is_alive() and not (dvc_repo / "model.txt").exists()  # waiting, not failed
    runner.join(timeout=300)
    assert done and done[0]["stages"][0]["ran"] and (dvc_repo / "model.txt").read_text() == "ok"


def test_one_pipeline_run_per_checkout_and_the_profile_switch_waits_too(dvc_repo, prefect_server):
    """Another run of this checkout (any process) holds the checkout lock: a second run, started
    with a profile switch, waits before it touches params.yaml, then runs."""
    from flows.pipeline import LOCK, pipeline

    (dvc_repo / "crashed").touch()
    (dvc_repo / LOCK).parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\nlock.acquire()\n"
        "print('held', flush=True)\ntime.sleep(600)\n"), str(dvc_repo / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (dvc_repo / "params.yaml").read_text()
        done: list[dict] = []
        runner = threading.Thread(target=lambda: done.append(
            pipeline(root=str(dvc_repo), stages=["source_model"], profile="imagenet")))
        with _logged("prefect.flow_runs", "waiting for it to finish") as waiting:
            runner.start()
            assert waiting.wait(timeout=300), "the second run never said it waits for the checkout lock"
        assert runner.is_alive() and not (dvc_repo / "model.txt").exists()
        assert (dvc_repo / "params.yaml").read_text() == before  # the switch waits with the run
    finally:
        holder.kill()
        holder.wait()
    runner.join(timeout=300)
    assert done and (dvc_repo / "model.txt").read_text() == "ok"
    assert "profile: imagenet" in (dvc_repo / "params.yaml").read_text()


@contextlib.contextmanager
def _logged(logger: str, text: str) -> Iterator[threading.Event]:
    """An event, set once a record holding ``text`` reaches the logger ``logger`` (a flow's prints do:
    log_prints)."""
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    handler = Watch()
    logging.getLogger(logger).addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger(logger).removeHandler(handler)


def _artifacts(flow_run_id=None, key: str | None = None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]) if key else None,
                         flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None)
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=flt)


def test_a_failed_run_publishes_the_stage_message_as_an_artifact(dvc_repo, prefect_server):
    from flows.pipeline import pipeline

    state = pipeline(root=str(dvc_repo), stages=["source_data"], return_state=True)
    assert state.is_failed()
    published = _artifacts(state.state_details.flow_run_id, "sda-failure")
    assert published and USER_ERROR in published[0].data and "exit status 2" in published[0].data


def test_the_cli_exits_2_with_the_stage_message_on_a_user_error(dvc_repo, prefect_server):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "flows.pipeline", "--root", str(dvc_repo), "--stages", "source_data"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()
    assert any(line.startswith("error: stage source_data failed (exit status 2") for line in last), r.stderr[-3000:]
    assert USER_ERROR in r.stderr


def test_a_stage_past_its_timeout_is_killed_and_not_retried(dvc_repo, prefect_server):
    from flows.pipeline import StageFailed, pipeline

    raw = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    raw["runtime"]["stage_timeouts"] = {"diffusion_finetune": 8}
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(raw))
    t0 = time.time()
    state = pipeline(root=str(dvc_repo), stages=["diffusion_finetune"], return_state=True)
    assert state.is_failed() and time.time() - t0 < 120  # not the stage's 600 s
    err = state.result(raise_on_failure=False)
    assert isinstance(err, StageFailed) and err.timeout == 8
    assert "runtime.stage_timeouts.diffusion_finetune" in state.message
    assert (dvc_repo / "attempts.txt").read_text() == "x"  # killed once, not retried
    import psutil

    assert not [p for p in psutil.process_iter(["cmdline"]) if "slow.py" in " ".join(p.info["cmdline"] or [])]


def test_shard_jobs_publish_their_progress(dvc_repo, prefect_server):
    from flows.pipeline import pipeline

    state = pipeline(root=str(dvc_repo), stages=["synth_generate"], return_state=True)
    assert state.is_completed()
    progress = _artifacts(state.state_details.flow_run_id, "sda-synth-generate")  # this run's, not another's
    assert len(progress) == 1 and progress[0].type == "progress" and progress[0].data == 100.0
