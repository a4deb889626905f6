"""The WebDataset reader / writer, plus atomic output helpers (:mod:`sda.streaming` streams sets
through DataLoader workers on top of :func:`iter_shard_file`).

A shard set is a directory of ``<prefix>-NNNNNN.tar`` files written by ``webdataset.ShardWriter``
and a ``manifest.json`` that lists every shard with its sample count, byte size and sha256, the
per-class counts and free-form metadata (seeds, model ids). Each sample holds:

- ``__key__``: a deterministic string key, unique in the set;
- ``png``: the image, uint8 (H, W, 3);
- ``cls``: the integer label (-1 where unknown);
- ``json``: per-sample metadata (dict).

Writers never leave a half-written set behind: :func:`atomic_dir` builds the set in a sibling
temporary directory and renames it into place only when everything (manifest included) is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import webdataset as wds

__all__ = [
    "MANIFEST",
    "Sample",
    "ShardSet",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "batched",
    "iter_batches",
    "iter_samples",
    "iter_shard_file",
    "load_shards",
    "clean_stale_temps",
    "read_manifest",
    "replace_dir",
    "sha256_file",
    "shard_record",
    "verify_shards",
    "write_shards",
]

MANIFEST = "manifest.json"
_TMP_MARK = ".tmp-"


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
# atomic outputs


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clean_stale_temps(parent: Path, name: str) -> None:
    """Remove temporaries that a killed writer of ``parent/name`` left behind."""
    if parent.is_dir():
        for p in parent.glob(f"{name}{_TMP_MARK}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` only if the block succeeds.

    A crash or kill inside the block leaves ``final`` as it was (or absent); the temporary is
    removed on exceptions and by the next writer after a kill.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}{_TMP_MARK}", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move the finished directory ``src`` to ``final`` (same file system), replacing what was
    there, by renames only: readers see the old or the new version, never a mix."""
    src, final = Path(src), Path(final)
    _fsync_dir(src)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f"{final.name}{_TMP_MARK}old-{os.getpid()}")
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)
    _fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{_TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    Use inside :func:`atomic_dir` so that readers never see a partial set.
    """
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
    shards = []
    for name in sorted(counts):
        path = out_dir / name
        shards.append({"name": name, "count": counts[name], "bytes": path.stat().st_size,
                       "sha256": sha256_file(path)})
    manifest = {
        "count": len(seen),
        "classes": {str(k): v for k, v in sorted(classes.items())},
        "shards": shards,
        "meta": meta or {},
    }
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


def iter_samples(shard_dir: str | os.PathLike[str]) -> Iterator[Sample]:
    """Stream the samples of a finished shard set in key order of writing (deterministic)."""
    manifest = read_manifest(shard_dir)
    for e in manifest["shards"]:
        yield from iter_shard_file(Path(shard_dir) / e["name"])


def iter_shard_file(path: str | os.PathLike[str]) -> Iterator[Sample]:
    """Stream the samples of one shard file in order."""
    # no worker / node splitting: one file is read whole, also inside a DataLoader worker (sda.streaming)
    ds = wds.WebDataset([str(path)], shardshuffle=False, empty_check=False, nodesplitter=None,
                        workersplitter=None).decode("rgb8")
    for rec in ds:
        yield Sample(key=rec["__key__"], image=rec["png"], label=int(rec["cls"]), meta=rec["json"])


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
