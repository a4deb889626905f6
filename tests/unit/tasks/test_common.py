"""What every stage command shares (tasks.common): its params checked first, a user error as exit 2 and one
line, and the run record the flow reads (sda.layout.StageRun) for every way the command ends."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from sda.layout import StageRun
from tasks.common import missing_upstream, stage_main

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def checkout(tmp_path, monkeypatch, restore_determinism):
    """An empty checkout (a ``data/`` folder and the repository's params.yaml) as the working directory."""
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["python -m tasks.x"])
    return tmp_path


def _run(body, stage: str = "source_data") -> int:
    try:
        stage_main(stage, "a test stage", body)
    except SystemExit as err:
        return err.code
    return 0


def test_a_finished_stage_records_its_exit_status_and_its_work_time(checkout):
    seen = {}

    def body(params, args):
        seen["seed"], seen["device"] = params.runtime.seed, args.device.type
        time.sleep(0.05)

    before = time.time()
    assert _run(body) == 0
    run = StageRun.read("source_data")  # its process started when tasks was imported: before this test
    assert seen == {"seed": 0, "device": "cpu"}
    assert run.exit_status == 0 and run.work_seconds >= 0.05 and run.work_start >= before >= run.process_start
    assert StageRun.read("source_data", since=run.process_start + 0.001) is None  # an earlier process's record


@pytest.mark.parametrize("error", [ValueError("data/raw/cat.png is not an image"), FileNotFoundError("nothing here")])
def test_a_user_error_exits_2_with_one_line_and_is_recorded_so(checkout, capsys, error):
    def body(params, args):
        raise error

    assert _run(body) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error in stage source_data: {error}"]
    run = StageRun.read("source_data")
    assert run.exit_status == 2 and run.work_seconds is None  # no work finished


def test_bad_params_exit_2_before_any_work(checkout, capsys):
    (checkout / "params.yaml").write_text((checkout / "params.yaml").read_text().replace("  seed: 0", "  sed: 0", 1))
    called = []
    assert _run(lambda params, args: called.append(1)) == 2
    assert called == [] and "runtime.sed: unknown parameter" in capsys.readouterr().err
    assert StageRun.read("source_data").exit_status == 2


def test_an_unexpected_error_propagates_and_is_recorded_as_status_1(checkout):
    def body(params, args):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _run(body)
    assert StageRun.read("source_data").exit_status == 1  # not a user error: the flow retries it


def test_a_command_run_outside_a_checkout_leaves_nothing_behind(checkout):
    shutil.rmtree(checkout / "data")
    (checkout / "params.yaml").write_text("runtime: {sed: 0}\n")
    assert _run(lambda params, args: None) == 2
    assert sorted(p.name for p in checkout.iterdir()) == ["params.yaml"]


def test_a_missing_upstream_output_names_the_stage_to_run_first(checkout):
    err = FileNotFoundError(2, "No such file", "data/source_model/config.json")
    assert "stage source_model has not run in this checkout; run `dvc repro evaluate`" in missing_upstream(err, "evaluate")
    assert missing_upstream(err, "source_model") is None  # its own output: not an upstream's
    assert missing_upstream(FileNotFoundError(2, "No such file", "elsewhere/x.json"), "evaluate") is None
