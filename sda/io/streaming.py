"""Shard sets as streams of batches: WebDataset pipelines read by ``wds.WebLoader`` worker processes.

Memory is bounded by the batch size and the shuffle buffer, not by the size of the set, so the
stages that read whole sets (``classifier_align``, ``evaluate``) run at any scale:

- training (``seed`` given): the shard order is shuffled per epoch, shards are split across the
  loader's workers, and each worker shuffles samples through a buffer of ``shuffle_buffer``; both
  shuffles are seeded by ``(seed, epoch)``, so a seed and a worker count fix the batches;
- evaluation (``seed=None``): shards in manifest order, samples in order within each worker;
- ``paired_dir``: a second shard set with the same shards and keys (a projection of the first, as
  ``target_project`` writes it) is read beside the first, sample by sample, and a key that differs
  is an error.

Decoding happens in the workers; the model-side preprocessing (resize, crop, normalise) is done
by the caller on its device (:func:`sda.models.classifiers.to_model_input`), the GPU when there is one.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset

from sda.io.shards import iter_shard_file, read_manifest
from sda.runtime import derive_seed

__all__ = ["Batch", "ShardStream", "endless_batches"]


@dataclass
class Batch:
    """``keys`` (B,), ``images`` uint8 (B, H, W, 3), ``labels`` int64 (B,), and ``paired`` uint8
    (B, H, W, 3) from ``paired_dir`` (``None`` without one)."""

    keys: list[str]
    images: np.ndarray
    labels: np.ndarray
    paired: np.ndarray | None = None


def _collate(samples: list[tuple[str, np.ndarray, int, np.ndarray | None]]) -> Batch:
    keys, images, labels, paired = zip(*samples)
    return Batch(list(keys), np.stack(images), np.asarray(labels, dtype=np.int64),
                 None if paired[0] is None else np.stack(paired))


def _read(items: Iterator[dict[str, Any]]) -> Iterator[tuple[str, np.ndarray, int, np.ndarray | None]]:
    """Pipeline stage: shard items -> (key, image, label, paired image) in shard order."""
    for item in items:
        first = iter_shard_file(item["url"])
        if item.get("paired") is None:
            for s in first:
                yield s.key, s.image, s.label, None
            continue
        second = iter_shard_file(item["paired"])
        for a in first:
            b = next(second, None)
            if b is None or b.key != a.key:
                raise ValueError(f"{item['paired']} does not pair with {item['url']}: key {a.key!r} meets "
                                 f"{None if b is None else b.key!r}; re-run the stage that wrote it")
            yield a.key, a.image, a.label, b.image


class _Items(IterableDataset):
    """The first stage of a pipeline: one dict per shard (``url`` and ``paired``)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__()
        self.items = items

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)


class ShardStream:
    """Batches of one pass (epoch) over a shard set; ``len()`` is the number of batches.

    ``workers`` loader processes (0: read in this process). The batches depend on ``batch_size``,
    ``seed``, ``epoch``, ``shuffle_buffer`` and ``workers`` alone (each worker ends with its own
    partial batch), never on timing: with several workers the loader takes one batch from each in
    turn. Iterating twice reads the set twice, in the same order.
    """

    def __init__(self, shard_dir: str | os.PathLike[str], batch_size: int, *, workers: int = 0,
                 seed: int | None = None, epoch: int = 0, shuffle_buffer: int = 1000,
                 paired_dir: str | os.PathLike[str] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shard_dir, self.batch_size, self.workers = Path(shard_dir), batch_size, workers
        self.seed, self.epoch, self.shuffle_buffer = seed, epoch, shuffle_buffer
        entries = read_manifest(self.shard_dir)["shards"]
        paired = read_manifest(paired_dir)["shards"] if paired_dir is not None else None
        layout = lambda shards: [(e["name"], e["count"]) for e in shards]  # noqa: E731
        if paired is not None and layout(paired) != layout(entries):
            raise ValueError(f"{paired_dir} and {shard_dir} do not hold the same shards (names, counts): "
                             "re-run the stage that wrote the first from the second")
        self.items = [{"url": str(self.shard_dir / e["name"]), "count": e["count"],
                       "paired": None if paired is None else str(Path(paired_dir) / e["name"])} for e in entries]
        if seed is not None:
            random.Random(derive_seed(seed, "shard-order", epoch)).shuffle(self.items)

    def __len__(self) -> int:
        w = max(1, self.workers)  # wds.split_by_worker: worker i reads shards i, i + w, ...
        return sum(math.ceil(sum(it["count"] for it in self.items[i::w]) / self.batch_size) for i in range(w))

    @property
    def count(self) -> int:
        """Samples in one pass."""
        return sum(it["count"] for it in self.items)

    def pipeline(self) -> wds.DataPipeline:
        stages: list[Any] = [_Items(self.items), wds.split_by_worker, _read]
        if self.seed is not None and self.shuffle_buffer > 1:
            stages.append(wds.detshuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                         seed=derive_seed(self.seed, "buffer", self.epoch)))
        stages.append(wds.batched(self.batch_size, collation_fn=_collate, partial=True))
        return wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[Batch]:
        if self.workers == 0:
            return iter(self.pipeline())
        loader = wds.WebLoader(self.pipeline(), batch_size=None, num_workers=self.workers, collate_fn=_as_is)
        return iter(loader)


def _as_is(batch: Batch) -> Batch:
    return batch


def endless_batches(shard_dir: str | os.PathLike[str], batch_size: int, *, seed: int, workers: int = 0,
                    shuffle_buffer: int = 1000, labels: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(images uint8 (B, H, W, 3), labels int64 (B,) or ``None`` when ``labels`` is false) for ever:
    epoch after epoch of seeded shuffled :class:`ShardStream` passes, for step-counted training.
    Batches are full: each worker's last partial batch of an epoch is left out, and a pass that
    gives no full batch at all (fewer samples than ``batch_size``, or per loader worker) is an
    error rather than an endless loop."""
    for epoch in itertools.count():
        full = 0
        for b in ShardStream(shard_dir, batch_size, workers=workers, seed=seed, epoch=epoch,
                             shuffle_buffer=shuffle_buffer):
            if len(b.keys) == batch_size:
                full += 1
                yield b.images, b.labels if labels else None
        if not full:
            raise ValueError(f"{shard_dir} holds fewer than batch_size={batch_size} samples (per loader worker, "
                             f"with {workers}): lower the batch size or the loader workers")
