"""sda.io.cluster: the worker settings that keep torch jobs at full speed, read where a worker runs; a
warning naming workers started without them; an unreachable scheduler named within the connect timeout."""

from __future__ import annotations

import logging
import os
import time

import dask
import distributed  # noqa: F401 - its config defaults must exist before dask.config.set overrides one
import pytest

from sda.io.cluster import (DASK_WORKER_CONFIG, SchedulerUnreachableError, _warn_slow_workers, dask_client,
                            worker_settings)
from tests.support import free_port

MALLOC = "MALLOC_TRIM_THRESHOLD_"


def test_the_settings_read_back_are_the_fast_ones_under_the_fast_config(monkeypatch):
    monkeypatch.delenv(MALLOC, raising=False)
    with dask.config.set(DASK_WORKER_CONFIG):
        assert worker_settings() == DASK_WORKER_CONFIG


def test_the_malloc_setting_is_read_from_the_process_environment_not_the_config(monkeypatch):
    monkeypatch.setenv(MALLOC, "65536")  # what a plain `dask worker`'s nanny gives its worker
    with dask.config.set(DASK_WORKER_CONFIG):
        got = worker_settings()
    assert got["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert {k: v for k, v in got.items() if "MALLOC" not in k} == {
        k: v for k, v in DASK_WORKER_CONFIG.items() if "MALLOC" not in k}


def test_dasks_defaults_differ_from_the_fast_settings(monkeypatch):
    monkeypatch.delenv(MALLOC, raising=False)
    got = worker_settings()
    assert got["distributed.worker.profile.enabled"] is True and got != DASK_WORKER_CONFIG


class _Client:
    """A dask Client's ``run`` as _warn_slow_workers uses it: each worker's answer to the function."""

    def __init__(self, answers: dict[str, dict]):
        self.answers = answers

    def run(self, fn):
        assert fn is worker_settings
        return self.answers


def test_only_workers_without_the_fast_settings_are_named_in_one_warning(caplog):
    slow = {**DASK_WORKER_CONFIG, "distributed.worker.profile.enabled": True}
    client = _Client({"tcp://b:2": slow, "tcp://a:1": dict(DASK_WORKER_CONFIG), "tcp://c:3": slow})
    with caplog.at_level(logging.WARNING, logger="sda.io.cluster"):
        _warn_slow_workers(client)
    (record,) = caplog.records
    msg = record.getMessage()
    assert msg.startswith("2 of 3 dask workers run with dask's default settings")
    assert "python -m sda.io.dask_worker" in msg and msg.endswith("(tcp://b:2, tcp://c:3)")


def test_fast_workers_get_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sda.io.cluster"):
        _warn_slow_workers(_Client({"tcp://a:1": dict(DASK_WORKER_CONFIG)}))
    assert caplog.records == []


def test_an_unreachable_scheduler_is_named_within_the_connect_timeout():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with dask.config.set({"distributed.comm.timeouts.connect": "0.3s"}):
        with pytest.raises(SchedulerUnreachableError, match=f"no dask scheduler answered at {address} within 0.3s"):
            with dask_client(scheduler=address):
                pass
    assert time.perf_counter() - t0 < 10


# moved from tests/unit/sda/io/test_resumable_jobs.py
@pytest.mark.slow
def test_local_workers_start_with_the_fast_settings_and_slow_ones_are_named():
    """dask's defaults (a malloc tunable in the worker's environment, a 10 ms profiler) halve torch's
    CPU speed in a worker (bench/dask_scaling.py); our local clusters start without them, and
    workers that have them get a warning that says how to start them."""
    with dask_client(1) as c:
        assert list(c.run(worker_settings).values()) == [DASK_WORKER_CONFIG]
        c.run(lambda: os.environ.update(MALLOC_TRIM_THRESHOLD_="65536"))  # as a plain `dask worker` has it
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("sda.io.cluster").addHandler(handler)
        try:
            _warn_slow_workers(c)
        finally:
            logging.getLogger("sda.io.cluster").removeHandler(handler)
    assert len(records) == 1, records
    assert "1 of 1 dask workers" in records[0].getMessage() and "python -m sda.io.dask_worker" in records[0].getMessage()
