"""Shard sets: the one WebDataset reader / writer (:mod:`sda.io.streaming` streams sets through
DataLoader workers on top of :func:`iter_shard_file`; :mod:`sda.io.resumable_jobs` writes them as
resumable jobs).

A shard set is a directory of ``<prefix>-NNNNNN.tar`` files written by ``webdataset.ShardWriter``
and a ``manifest.json`` that lists every shard with its sample count, byte size and sha256, the
per-class counts and free-form metadata (seeds, model ids). Each sample holds:

- ``__key__``: a deterministic string key, unique in the set;
- ``png``: the image, uint8 (H, W, 3);
- ``cls``: the integer label (-1 where unknown);
- ``json``: per-sample metadata (dict).

Writers never leave a half-written set behind: build the set inside :func:`sda.io.atomic.atomic_dir`,
which renames it into place only when everything (manifest included) is written.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Iterator

import numpy as np

from sda.io.atomic import atomic_write_json, sha256_file

__all__ = [
    "MANIFEST",
    "Sample",
    "ShardSet",
    "batched",
    "iter_batches",
    "iter_samples",
    "iter_shard_file",
    "load_shards",
    "make_manifest",
    "read_manifest",
    "read_positions",
    "shard_entry",
    "shard_record",
    "verify_shards",
    "write_shards",
]

MANIFEST = "manifest.json"


@dataclass
class Sample:
    """One record of a shard set. ``image`` is uint8 (H, W, 3)."""

    key: str
    image: np.ndarray
    label: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardSet:
    """A whole shard set held in memory (small sets only). ``images`` uint8 (N, H, W, 3)."""

    keys: list[str]
    images: np.ndarray
    labels: np.ndarray
    metas: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# writing


def shard_record(s: Sample, seen: set[str], where: str) -> dict[str, Any]:
    """Validate ``s`` (unique key, uint8 (H, W, 3) image), add its key to ``seen`` and return the
    WebDataset record. Every shard writer goes through here, so the record format is in one place."""
    if s.key in seen:
        raise ValueError(f"duplicate key {s.key!r} while writing {where}")
    if s.image.dtype != np.uint8 or s.image.ndim != 3 or s.image.shape[2] != 3:
        raise ValueError(f"sample {s.key!r}: image must be uint8 (H, W, 3), got {s.image.dtype} {s.image.shape}")
    seen.add(s.key)
    return {"__key__": s.key, "png": s.image, "cls": int(s.label), "json": s.meta}


def shard_entry(path: str | os.PathLike[str], count: int) -> dict[str, Any]:
    """A manifest's record of one finished shard file: name, sample count, bytes, sha256."""
    path = Path(path)
    return {"name": path.name, "count": count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def make_manifest(shards: list[dict[str, Any]], classes: Counter[int], meta: dict[str, Any] | None) -> dict[str, Any]:
    """A shard set's ``manifest.json`` content: total count, per-class counts (keys in class
    order), the shard records (:func:`shard_entry`, possibly with more keys) and ``meta``."""
    return {"count": sum(s["count"] for s in shards),
            "classes": {str(k): v for k, v in sorted(classes.items())},
            "shards": shards, "meta": meta or {}}


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike[str],
    *,
    prefix: str = "shard",
    maxcount: int = 1000,
    maxsize: float = 3e9,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``samples`` as WebDataset shards into the (existing, empty) ``out_dir``.

    Keys must be unique. Returns the manifest, which is also written to ``out_dir/manifest.json``.
    Use inside :func:`sda.io.atomic.atomic_dir` so that readers never see a partial set.
    """
    import webdataset as wds  # here, not at the top: it imports torch (a params error answers before it)

    out_dir = Path(out_dir)
    seen: set[str] = set()
    classes: Counter[int] = Counter()
    counts: Counter[str] = Counter()
    current: list[str] = []

    def _post(fname: str) -> None:
        current.append(fname)

    with wds.ShardWriter(
        str(out_dir / f"{prefix}-%06d.tar"), maxcount=maxcount, maxsize=maxsize, post=_post, verbose=0,
        mtime=0.0,  # fixed mtime: the same samples give the same bytes (reproducible sha256)
    ) as sink:
        for s in samples:
            sink.write(shard_record(s, seen, where=str(out_dir)))
            classes[int(s.label)] += 1
            counts[Path(sink.fname).name] += 1
    manifest = make_manifest([shard_entry(out_dir / name, counts[name]) for name in sorted(counts)], classes, meta)
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {shard_dir} is not a finished shard set (re-run the stage that writes it)"
        )
    return json.loads(path.read_text())


def verify_shards(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every shard listed in the manifest against its size and sha256; return the manifest."""
    manifest = read_manifest(shard_dir)
    for entry in manifest["shards"]:
        path = Path(shard_dir) / entry["name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path} does not match its manifest entry (truncated or modified)")
    return manifest


def iter_samples(shard_dir: str | os.PathLike[str], labels: Container[int] | None = None) -> Iterator[Sample]:
    """Stream the samples of a finished shard set in key order of writing (deterministic); with
    ``labels``, only those of these classes (the others are skipped before their image is decoded)."""
    manifest = read_manifest(shard_dir)
    for e in manifest["shards"]:
        yield from iter_shard_file(Path(shard_dir) / e["name"], labels)


def iter_shard_file(path: str | os.PathLike[str], labels: Container[int] | None = None,
                    where: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[Sample]:
    """Stream the samples of one shard file in order (with ``labels``: of these classes only; with
    ``where``: those whose raw record it keeps, called once per record in order, before any decoding)."""
    import webdataset as wds

    # no worker / node splitting: one file is read whole, also inside a DataLoader worker (sda.io.streaming)
    ds = wds.WebDataset([str(path)], shardshuffle=False, empty_check=False, nodesplitter=None,
                        workersplitter=None)
    if where is not None:
        ds = ds.select(where)
    if labels is not None:
        ds = ds.select(lambda rec: int(rec["cls"]) in labels)
    ds = ds.decode("rgb8")
    for rec in ds:
        yield Sample(key=rec["__key__"], image=rec["png"], label=int(rec["cls"]), meta=rec["json"])


def read_positions(shard_dir: str | os.PathLike[str], positions: Iterable[int]) -> list[Sample]:
    """The samples at ``positions`` (0-based, in the set's order of writing) of a finished shard set, in
    that order, duplicates once. Opens only the shards that hold one (the manifest's counts) and decodes
    only those samples: memory is what is returned. A position outside the set is an ``IndexError``."""
    wanted = sorted({int(p) for p in positions})
    shards = read_manifest(shard_dir)["shards"]
    total = sum(e["count"] for e in shards)
    if wanted and (wanted[0] < 0 or wanted[-1] >= total):
        raise IndexError(f"{shard_dir}: positions must lie in [0, {total}); got {wanted[0]}..{wanted[-1]}")
    out: list[Sample] = []
    start = 0
    for e in shards:
        here = {p - start for p in wanted if start <= p < start + e["count"]}
        if here:
            at = itertools.count()
            out += iter_shard_file(Path(shard_dir) / e["name"], where=lambda rec: next(at) in here)
        start += e["count"]
    return out


def batched(samples: Iterable[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive lists of ``batch_size`` samples (the last may be shorter)."""
    it = iter(samples)
    while batch := list(itertools.islice(it, batch_size)):
        yield batch


def iter_batches(shard_dir: str | os.PathLike[str], batch_size: int) -> Iterator[list[Sample]]:
    """Group :func:`iter_samples` into lists of at most ``batch_size`` samples."""
    return batched(iter_samples(shard_dir), batch_size)


def load_shards(shard_dir: str | os.PathLike[str]) -> ShardSet:
    """Read a whole (small) shard set into memory."""
    keys, images, labels, metas = [], [], [], []
    for s in iter_samples(shard_dir):
        keys.append(s.key)
        images.append(s.image)
        labels.append(s.label)
        metas.append(s.meta)
    if not images:
        raise ValueError(f"{shard_dir} holds no samples")
    return ShardSet(keys=keys, images=np.stack(images), labels=np.asarray(labels, dtype=np.int64), metas=metas)
