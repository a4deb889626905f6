"""Target streams: the order and batching in which test-time adaptation sees the target images.

The test-time-adaptation community's protocols (the names of mariodoebler/test-time-adaptation):

- ``iid``: each domain shuffled, one domain after another, the adapted model reset at each domain
  (``reset_each_shift``);
- ``continual``: the same order, never reset (the model carries what it learnt from one domain to the next);
- ``mixed``: every domain's images shuffled together (``mixed_domains``), never reset;
- ``correlated``: per domain, the labels in a Dirichlet order (NOTE, Gong et al., NeurIPS 2022: each
  class's images split over ``num_classes`` time slots by proportions ~ Dir(``delta``)), reset at each
  domain; a small ``delta`` is nearly class-sorted, ``delta = 0`` is its limit (class-sorted: each class
  in one run, classes in a random order).

Any protocol takes any batch size (down to 1). A stream is a list of batches of *global* image
indices (into the concatenation of the domains, in ``domains`` order), each with a flag saying
whether the adapted model is reset before it. Orders are seeded by ``(seed, stream name)`` only,
so every method sees the same stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from sda.runtime import derive_seed

__all__ = ["Order", "StreamBatch", "dirichlet_order", "stream_batches"]

Order = Literal["iid", "continual", "mixed", "correlated"]


@dataclass(frozen=True)
class StreamBatch:
    """``indices`` int64 (B,): global image indices; ``reset``: reset the adapted model before this batch."""

    indices: np.ndarray
    reset: bool


def dirichlet_order(labels: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(labels))`` whose labels are temporally correlated.

    Each class's images (shuffled) are split over ``C`` time slots (``C`` = number of classes present) by
    proportions drawn from Dir(``delta``); slots are concatenated in order, each holding its classes'
    chunks in a random order (NOTE's and RoTTA's ``sort_by_dirichlet``). ``delta`` large:
    nearly i.i.d.; small: each class concentrated in few slots; ``0``: class-sorted (classes in a random
    order, each class contiguous)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if delta < 0:
        raise ValueError(f"streams: delta must be >= 0, got {delta}")
    if delta == 0:
        order = rng.permutation(classes)
        return np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in order])
    slots: list[list[np.ndarray]] = [[] for _ in classes]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(len(classes), delta))
        cuts = np.round(np.cumsum(p)[:-1] * len(idx)).astype(int)
        for s, part in enumerate(np.split(idx, cuts)):
            slots[s].append(part)
    # within a slot the classes' chunks come in a random order, each chunk contiguous (as NOTE / RoTTA)
    return np.concatenate([parts[i] for parts in slots for i in rng.permutation(len(parts))])


def stream_batches(domain_sizes: Mapping[str, int], labels: np.ndarray, *, order: Order, batch_size: int,
                   seed: int, name: str, delta: float | None = None) -> list[StreamBatch]:
    """The batches of one stream over domains of ``domain_sizes`` (ordered; their images are
    ``labels``' consecutive runs, ``labels`` int (sum of sizes,)). ``delta``: ``correlated`` only.

    Batches never straddle a reset (a domain's last batch may be smaller); in ``continual`` and
    ``mixed`` they run on across domains."""
    if batch_size < 1:
        raise ValueError(f"streams: batch_size must be >= 1, got {batch_size}")
    if order == "correlated" and delta is None:
        raise ValueError("streams: a correlated stream needs delta (0 = class-sorted)")
    rng = np.random.default_rng(derive_seed(seed, "stream", name))
    starts = np.cumsum([0, *domain_sizes.values()])
    per_domain = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
    if order == "mixed":
        runs = [rng.permutation(np.concatenate(per_domain))]
    elif order == "correlated":
        runs = [idx[dirichlet_order(labels[idx], float(delta), rng)] for idx in per_domain]
    elif order in ("iid", "continual"):
        runs = [rng.permutation(idx) for idx in per_domain]
    else:
        raise ValueError(f"streams: unknown order {order!r}; use iid, continual, mixed or correlated")
    if order in ("continual", "mixed"):
        runs = [np.concatenate(runs)]  # one run: no reset after the first batch
    out = []
    for run in runs:
        for i in range(0, len(run), batch_size):
            out.append(StreamBatch(run[i: i + batch_size].astype(np.int64), reset=(i == 0)))
    return out


def label_runs(labels: Sequence[int]) -> float:
    """Mean length of runs of equal consecutive labels (1 for alternating labels, N for one class):
    how correlated a stream's order is."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    changes = int((labels[1:] != labels[:-1]).sum())
    return len(labels) / (changes + 1)
