"""The append-only Parquet stores: one atomic file per batch, read back by content hash."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sda.relabel.store import (QUARANTINE_SCHEMA, commit_batch, committed_hashes, part_files, read_table, remove_stale_temps)


def _rows(shas: list[str], batch: str) -> pa.Table:
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.timezone.utc)
    n = len(shas)
    return pa.table({"file": [f"{s}.png" for s in shas], "sha256": shas, "reason": ["r"] * n, "size_bytes": [1] * n,
                     "quarantined_as": shas, "batch_id": [batch] * n, "run_id": ["run"] * n,
                     "flow_run_id": [None] * n, "quarantined_at": [now] * n}, schema=QUARANTINE_SCHEMA)


def test_commit_and_read_back(tmp_path):
    assert read_table(tmp_path) is None and committed_hashes(tmp_path) == set()
    day1 = dt.datetime(2026, 11, 24, 23, 59, tzinfo=dt.timezone.utc)
    p1 = commit_batch(tmp_path, _rows(["a", "b"], "b1"), "b1", day1)
    p2 = commit_batch(tmp_path, _rows(["c"], "b2"), "b2")
    assert p1.parent.name == "date=2026-11-24" and p1.name == "part-b1.parquet"
    assert part_files(tmp_path) == sorted([p1, p2])
    assert committed_hashes(tmp_path) == {"a", "b", "c"}
    table = read_table(tmp_path)
    assert table.num_rows == 3 and "date" in table.column_names
    assert pq.read_table(p1).schema.equals(QUARANTINE_SCHEMA)
    with pytest.raises(FileExistsError, match="b1"):
        commit_batch(tmp_path, _rows(["a"], "b1"), "b1")


def test_a_killed_commit_leaves_only_an_ignored_temporary(tmp_path):
    commit_batch(tmp_path, _rows(["a"], "b1"), "b1")
    part = next(tmp_path.glob("date=*"))
    (part / ".part-b2.parquet.tmp-deadbeef").write_bytes(b"PAR1 half written")  # what kill -9 leaves
    assert committed_hashes(tmp_path) == {"a"}
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in part.iterdir()] == ["part-b1.parquet"]


def test_a_corrupt_part_file_is_set_aside_and_reported_not_a_crash(tmp_path):
    commit_batch(tmp_path, _rows(["a"], "b1"), "b1")
    bad = commit_batch(tmp_path, _rows(["b"], "b2"), "b2")
    bad.write_bytes(bad.read_bytes()[:40])  # cut short, as by a failing disk
    aside: list[str] = []
    assert committed_hashes(tmp_path, set_aside=aside) == {"a"}
    assert len(aside) == 1 and str(bad) in aside[0]
    assert not bad.exists() and (tmp_path / "_corrupt" / f"{bad.parent.name}-{bad.name}").is_file()
    assert read_table(tmp_path).num_rows == 1  # the dataset reads again


def test_only_new_part_files_are_read_again(tmp_path):
    commit_batch(tmp_path, _rows(["a", "b"], "b1"), "b1")
    seen: set = set()
    assert committed_hashes(tmp_path, parts_read=seen) == {"a", "b"} and len(seen) == 1
    commit_batch(tmp_path, _rows(["c"], "b2"), "b2")  # another writer, after the scan
    assert committed_hashes(tmp_path, skip_parts=set(seen), parts_read=seen) == {"c"} and len(seen) == 2
