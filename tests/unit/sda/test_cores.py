"""sda.cores: cores counted as busy at 50 % or more, the free count bounded by this process's affinity set,
and the OpenMP wait policy chosen only when nothing set one. psutil's per-core sample is replaced by fixed
percentages where a test needs a known load (a real sample depends on what else runs on the machine)."""

from __future__ import annotations

import os

import psutil
import pytest

from sda.cores import busy_cores, choose_wait_policy, free_cores

ALLOWED = len(os.sched_getaffinity(0))


@pytest.fixture
def load(monkeypatch):
    """Set the per-core busy percentages psutil reports (a list), or an exception it raises."""
    def set_load(percent):
        def cpu_percent(interval=None, percpu=False):
            if isinstance(percent, Exception):
                raise percent
            return list(percent)
        monkeypatch.setattr(psutil, "cpu_percent", cpu_percent)
    return set_load


def test_a_core_counts_as_busy_from_50_percent(load):
    load([49.9, 50.0, 100.0, 0.0])
    assert busy_cores() == 2


def test_free_cores_are_the_idle_ones_capped_by_the_affinity_set(load):
    load([0.0] * (ALLOWED + 8))
    assert free_cores() == ALLOWED
    load([100.0] * (ALLOWED + 8))
    assert free_cores() == 1  # never less than one
    load([10.0, 20.0, 95.0])
    assert free_cores() == min(ALLOWED, 2)


def test_an_unmeasurable_load_is_no_busy_core_and_the_whole_affinity_set_free(load):
    load(PermissionError("no /proc/stat"))
    assert busy_cores() == 0 and free_cores() == ALLOWED


def test_busy_cores_set_the_passive_wait_policy(load):
    load([90.0, 0.0])
    env: dict[str, str] = {}
    choose_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_idle_cores_leave_the_policy_unset(load):
    load([3.0, 0.0])
    env: dict[str, str] = {}
    choose_wait_policy(env)
    assert env == {}


def test_a_policy_already_set_is_kept(load):
    load([90.0, 90.0])
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    choose_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_a_real_sample_is_within_the_machines_cores():
    assert 0 <= busy_cores(0.05) <= (os.cpu_count() or 1)
    assert 1 <= free_cores(0.05) <= ALLOWED
