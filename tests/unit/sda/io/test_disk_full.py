"""A write that fails half-way (the disk fills up) loses nothing: the previous shard set and the
committed Parquet rows are intact and no temporary file is left. The failure is real: the writer
runs in a process whose file size limit (RLIMIT_FSIZE) the output outgrows, so the OS refuses it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sda.io.atomic import atomic_dir
from sda.io.shards import Sample, read_manifest, write_shards
from sda.relabel.store import commit_batch, read_table

ROOT = Path(__file__).resolve().parents[4]
LIMIT = 60_000  # bytes per file: the small first outputs fit, the big second ones do not

PRELUDE = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))
"""


def _run_limited(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def _samples(n: int, value: int):
    return (Sample(key=f"k{i:04d}", image=np.full((64, 64, 3), value, np.uint8), label=i % 3) for i in range(n))


@pytest.mark.slow
def test_a_shard_set_rewrite_that_fills_the_disk_keeps_the_old_set(tmp_path):
    out = tmp_path / "set"
    with atomic_dir(out) as tmp:
        write_shards(_samples(2, 1), tmp, maxcount=100)  # ~25 kB: fits
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = _run_limited(f"""
        import numpy as np
        from sda.io.atomic import atomic_dir
        from sda.io.shards import Sample, write_shards
        samples = (Sample(key=f"k{{i:04d}}", image=np.full((64, 64, 3), 2, np.uint8), label=0) for i in range(20))
        with atomic_dir({str(out)!r}) as tmp:
            write_shards(samples, tmp, maxcount=100)  # ~250 kB in one shard: refused past the limit
    """)
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and read_manifest(out)["count"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folder left


def _table(n: int, tag: str) -> pa.Table:
    return pa.table({"sha256": [f"{tag}{i:060d}" for i in range(n)], "blob": [tag * 2000] * n})


def test_a_parquet_commit_that_fills_the_disk_adds_no_row(tmp_path):
    store = tmp_path / "labels"
    commit_batch(store, _table(3, "a"), "first")
    r = _run_limited(f"""
        import pyarrow as pa
        from sda.relabel.store import commit_batch
        n = 400  # ~800 kB of incompressible-enough rows
        table = pa.table({{"sha256": [f"b{{i:060d}}" for i in range(n)], "blob": [str(i) * 2000 for i in range(n)]}})
        commit_batch({str(store)!r}, table, "second")
    """)
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr[-2000:]
    assert read_table(store).column("sha256").to_pylist() == [f"a{i:060d}" for i in range(3)]
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == ["part-first.parquet"]
