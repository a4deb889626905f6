"""Faults that end in one clear line and lose no finished work: a real full disk (a tmpfs mounted over the
folder, filled to the last byte) at the writes a stage makes after its work, and a relabel store whose
batch lost its monitor row and report. Needs root to mount; skipped where the test cannot mount."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from sda.io.shards import read_manifest
from tests.support import sh

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted over ``folder`` (what was there is hidden, not touched) and filled:
    every write into it fails with ENOSPC, as on a full disk, until the block ends (unmounted)."""
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        with open(folder / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:  # full: not a byte more
                pass
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def repo(tiny_repo, tmp_path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(tiny_repo, dst)
    return dst


def _run(repo: Path, stage: str) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", f"tasks.{stage}", check=False, timeout=600)


def _shards(out: Path) -> list[tuple[str, str, str]]:
    return sorted((d.name, s["name"], s["sha256"]) for d in out.iterdir() if d.is_dir()
                  for s in read_manifest(d)["shards"])


def test_a_full_runs_folder_after_the_last_shard_keeps_every_shard_and_says_so(repo):
    """target_project with data/.runs full: its run record cannot be written after the last shard. One
    line that names the folder, says the outputs are not there (as under `dvc repro -f`, which removes
    them first) and how to restore them; after space is freed, the re-run resumes every shard and
    writes the same bytes."""
    out = repo / "data" / "target_project"
    reference = _shards(out)
    shutil.rmtree(out)  # what `dvc repro -f` does before it runs the stage
    with full_disk(repo / "data" / ".runs"):
        r = _run(repo, "target_project")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = errors[0]
    assert f"cannot write {Path('data/.runs/target_project.json')} (No space left on device)" in line, line
    assert "data/.runs is on a full disk or quota (0 bytes free there)" in line and "it needed" in line, line
    assert "`dvc checkout target_project` restores the last ones" in line, line
    assert "the finished shards in data/.work/target_project-" in line, line
    r = _run(repo, "target_project")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    run = json.loads((repo / "data" / ".runs" / "target_project.json").read_text())["summary"]
    assert run["resumed_shards"] == run["shards"] > 0  # nothing computed twice
    assert _shards(out) == reference


def test_a_timing_that_cannot_be_written_fails_no_finished_stage(repo):
    """The timing record is written after the outputs are published: a full data/.runs costs a figure of
    the flow's, never the stage (exit 0, one warning, the outputs whole)."""
    before = sorted(p.relative_to(repo) for p in (repo / "data" / "source_data").rglob("*"))
    with full_disk(repo / "data" / ".runs"):
        r = _run(repo, "source_data")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "its outputs are complete, but its timing could not be recorded in data/.runs" in r.stderr
    assert sorted(p.relative_to(repo) for p in (repo / "data" / "source_data").rglob("*")) == before


def test_a_full_disk_with_the_outputs_in_place_says_they_are_intact(repo):
    with full_disk(repo / "data" / ".runs"):
        r = _run(repo, "target_project")
    line = next(line for line in r.stderr.splitlines() if line.startswith("error"))
    assert r.returncode == 2 and "the previous outputs in data/target_project are intact" in line, r.stderr[-2000:]
    assert not os.path.ismount(repo / "data" / ".runs")
