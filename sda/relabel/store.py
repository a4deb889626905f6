"""Append-only Parquet datasets keyed by content hash: the labels, the quarantine table and the monitor's rows.

Layout (hive-partitioned by the UTC date of the commit, readable with ``pyarrow.dataset`` or
``pandas.read_parquet(dir)``)::

    <dir>/date=2026-11-25/part-<batch id>.parquet

A batch is committed by writing one Parquet file under a hidden temporary name and renaming it into
place (:func:`sda.io.atomic.atomic_file`): the rename is the commit, so after a crash or ``kill -9`` a batch is either wholly in the
dataset or not at all. Which images are done is read back from the dataset itself (the ``sha256``
column), so there is no second book-keeping file that could disagree with it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sda.io.atomic import atomic_file, clean_stale_temps

__all__ = ["LABEL_SCHEMA", "MONITOR_SCHEMA", "MonitorRow", "QUARANTINE_SCHEMA", "commit_batch", "committed_hashes", "part_files",
           "read_table", "remove_stale_temps"]

_TS = pa.timestamp("us", tz="UTC")

LABEL_SCHEMA = pa.schema([
    ("key", pa.string()),              # sha256[:16]: the short id used in grids and reports
    ("sha256", pa.string()),           # identity of the image bytes: one row per value, ever
    ("source_path", pa.string()),      # relative to the inbox; "x.tar::member.jpg" for tar members
    ("width", pa.int32()),             # of the original image
    ("height", pa.int32()),
    ("mode", pa.string()),             # PIL mode before conversion to RGB
    ("label", pa.int32()),             # SDA: argmax of source(original) + aligned(projected) logits
    ("class_name", pa.string()),
    ("confidence", pa.float32()),      # softmax of the SDA logit sum at the label
    ("top5", pa.list_(pa.int32())),
    ("top5_confidence", pa.list_(pa.float32())),
    ("source_label", pa.int32()),      # the source model alone on the original image
    ("source_class_name", pa.string()),
    ("source_confidence", pa.float32()),
    ("source_model_hash", pa.string()),     # DVC hashes of the models used
    ("aligned_model_hash", pa.string()),
    ("diffusion_model_hash", pa.string()),
    ("params_hash", pa.string()),
    ("code_version", pa.string()),
    ("batch_id", pa.string()),
    ("run_id", pa.string()),
    ("flow_run_id", pa.string()),      # null outside Prefect (the CLI)
    ("labelled_at", _TS),
])

QUARANTINE_SCHEMA = pa.schema([
    ("file", pa.string()),             # source path relative to the inbox
    ("sha256", pa.string()),
    ("reason", pa.string()),
    ("size_bytes", pa.int64()),
    ("quarantined_as", pa.string()),   # the copy under <quarantine>/files/
    ("batch_id", pa.string()),
    ("run_id", pa.string()),
    ("flow_run_id", pa.string()),
    ("quarantined_at", _TS),
])


def _column(arrow: pa.DataType, doc: str = ""):
    return field(metadata={"arrow": arrow, "doc": doc})


@dataclass(frozen=True)
class MonitorRow:
    """One committed batch as the monitor saw it: a row of ``<labels>/_monitor/`` (:mod:`sda.relabel.monitor`).
    Its fields are the columns; :data:`MONITOR_SCHEMA` is derived from them."""

    batch_id: str = _column(pa.string())
    run_id: str = _column(pa.string())
    flow_run_id: str | None = _column(pa.string(), "null outside Prefect (the CLI)")
    images: int = _column(pa.int32())
    too_few: bool = _column(pa.bool_())
    drift: bool = _column(pa.bool_())
    estimated_accuracy: float = _column(pa.float32(), "ATC, %")
    reference_accuracy: float = _column(pa.float32(), "SDA on the pipeline's evaluated targets, %")
    accuracy_drop: float = _column(pa.float32(), "points")
    low_confidence: float = _column(pa.float32(), "% at or under the ATC threshold")
    mean_confidence: float = _column(pa.float32())
    p_labels: float | None = _column(pa.float64(), "chi-square test of the label counts (null: too few)")
    p_confidence: float | None = _column(pa.float64(), "Kolmogorov-Smirnov test of the confidences")
    p_inputs: float | None = _column(pa.float64(), "MMD test of the inputs' features (null: not tested)")
    fired: str = _column(pa.string(), "the tests that flagged the batch, comma-separated (\"\": none)")
    label_shares: str = _column(pa.string(), "JSON {class: share}")
    monitored_at: dt.datetime = _column(_TS)

    @classmethod
    def of(cls, monitor: dict[str, Any], *, batch_id: str, run_id: str, flow_run_id: str | None,
           at: dt.datetime) -> "MonitorRow":
        """The row of a batch whose :func:`sda.relabel.monitor.monitor` result is ``monitor``."""
        tests = monitor["tests"]
        p = {name: tests[name]["p"] if name in tests else None for name in ("labels", "confidence", "inputs")}
        return cls(batch_id=batch_id, run_id=run_id, flow_run_id=flow_run_id, images=monitor["images"],
                   too_few=monitor["too_few"], drift=monitor["drift"],
                   estimated_accuracy=monitor["estimated_accuracy"], reference_accuracy=monitor["reference_accuracy"],
                   accuracy_drop=monitor["accuracy_drop"], low_confidence=monitor["low_confidence"],
                   mean_confidence=monitor["mean_confidence"], p_labels=p["labels"], p_confidence=p["confidence"],
                   p_inputs=p["inputs"], fired=",".join(monitor.get("fired", [])),
                   label_shares=json.dumps(monitor["label_shares"]), monitored_at=at)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist([asdict(self)], schema=MONITOR_SCHEMA)


# <labels>/_monitor/: one row per committed batch
MONITOR_SCHEMA = pa.schema([pa.field(f.name, f.metadata["arrow"]) for f in fields(MonitorRow)])


def part_files(root: str | os.PathLike[str]) -> list[Path]:
    """The committed part files of the dataset at ``root`` (temporaries excluded)."""
    return sorted(Path(root).glob("date=*/part-*.parquet"))


def read_table(root: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table | None:
    """The whole dataset (with its ``date`` partition column), or None when nothing is committed. Part
    files written before a column was added read it as null."""
    files = part_files(root)
    if not files:
        return None
    schema = pa.unify_schemas([pq.read_schema(f) for f in files]).append(pa.field("date", pa.string()))
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=schema,
                         partitioning=ds.partitioning(flavor="hive"), partition_base_dir=str(root))
    return dataset.to_table(columns=columns)


def committed_hashes(root: str | os.PathLike[str], *, skip_parts: set[Path] | None = None,
                     parts_read: set[Path] | None = None, set_aside: list[str] | None = None) -> set[str]:
    """Every ``sha256`` committed to the dataset at ``root``, part file by part file.

    ``skip_parts``: part files already read (only newer ones are read); the ones read are added to
    ``parts_read``. A part file that cannot be read (corrupt, cut short by a failing disk) is moved
    to ``<root>/_corrupt/`` (out of the dataset) and named in ``set_aside``, never a crash: its rows
    count as not committed, so its images are labelled again. Call it while holding the lock.
    """
    out: set[str] = set()
    for f in part_files(root):
        if skip_parts and f in skip_parts:
            continue
        try:
            out |= set(pq.read_table(f, columns=["sha256"]).column("sha256").to_pylist())
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...: any unreadable part
            aside = Path(root) / "_corrupt" / f"{f.parent.name}-{f.name}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, aside)
            if set_aside is not None:
                set_aside.append(f"{f} -> {aside}: {type(err).__name__}: {err}"[:300])
            continue
        if parts_read is not None:
            parts_read.add(f)
    return out


def remove_stale_temps(root: str | os.PathLike[str]) -> int:
    """Delete the temporaries of commits that were killed half-way, and the partition folders they
    leave empty (``pyarrow.dataset`` reads a dataset with an empty partition as no columns); returns
    how many temporaries. Call it only while holding the store's lock (a running writer's temporary
    looks the same)."""
    n = 0
    for part in sorted(Path(root).glob("date=*")):
        n += clean_stale_temps(part)
        if part.is_dir() and not any(part.iterdir()):
            part.rmdir()
    return n


def commit_batch(root: str | os.PathLike[str], table: pa.Table, batch_id: str,
                 when: dt.datetime | None = None) -> Path:
    """Atomically add ``table`` as ``<root>/date=<UTC date>/part-<batch_id>.parquet``; returns it.

    Committing a batch id that is already there raises FileExistsError (a caller bug: the batch's
    images were done already), so a row can never be committed twice under one batch id.
    """
    when = when or dt.datetime.now(dt.timezone.utc)
    final = Path(root) / f"date={when.date().isoformat()}" / f"part-{batch_id}.parquet"
    if any(Path(root).glob(f"date=*/part-{batch_id}.parquet")):
        raise FileExistsError(f"batch {batch_id} is already committed under {root}")
    with atomic_file(final) as tmp:
        pq.write_table(table, tmp)
    return final
