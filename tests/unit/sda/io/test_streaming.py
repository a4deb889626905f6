"""Streaming shard sets (sda.io.streaming): seeded shuffles for training, in-order pairs for evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from sda.io.shards import Sample, write_shards
from sda.io.streaming import ShardStream, endless_batches

N = 37  # 5 shards of at most 8


def _write(d, keys, value=0):
    d.mkdir(parents=True)
    write_shards((Sample(key=k, image=np.full((4, 4, 3), (i + value) % 256, np.uint8), label=i % 3)
                  for i, k in enumerate(keys)), d, maxcount=8)
    return d


@pytest.fixture
def shard_set(tmp_path):
    return _write(tmp_path / "set", [f"k{i:03d}" for i in range(N)])


def _keys(stream):
    batches = list(stream)
    assert len(batches) == len(stream)  # len() is the exact number of batches (the cosine schedule's length)
    return [k for b in batches for k in b.keys]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_stream_sees_every_key_once_in_a_seeded_order(shard_set, workers):
    """Buffer (5) smaller than the set (37): each epoch holds every key exactly once, the order is
    fixed by (seed, epoch) and changes with the epoch."""
    stream = lambda epoch, seed=7: ShardStream(shard_set, 6, workers=workers, seed=seed, epoch=epoch,  # noqa: E731
                                               shuffle_buffer=5)
    e0, e0_again, e1 = _keys(stream(0)), _keys(stream(0)), _keys(stream(1))
    assert sorted(e0) == sorted(e1) == [f"k{i:03d}" for i in range(N)]
    assert e0 == e0_again and e0 != e1 and _keys(stream(0, seed=8)) != e0
    assert e0 != sorted(e0)  # shuffled within shards, not only shard by shard


def test_batches_carry_matching_images_and_labels(shard_set):
    for b in ShardStream(shard_set, 10, seed=1, shuffle_buffer=5):
        idx = np.array([int(k[1:]) for k in b.keys])
        assert b.images.shape == (len(idx), 4, 4, 3) and b.images.dtype == np.uint8
        assert (b.images[:, 0, 0, 0] == idx % 256).all() and (b.labels == idx % 3).all() and b.paired is None


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_pairs_originals_and_projections_by_key(tmp_path, shard_set, workers):
    keys = [f"k{i:03d}" for i in range(N)]
    proj = _write(tmp_path / "proj", keys, value=100)
    got = list(ShardStream(shard_set, 8, workers=workers, paired_dir=proj))
    seen = [k for b in got for k in b.keys]
    assert sorted(seen) == keys and (workers or seen == keys)  # in manifest order in one process
    for b in got:
        assert (b.paired.astype(int) - b.images.astype(int) == 100).all()


def test_a_projection_with_other_keys_is_refused(tmp_path, shard_set):
    other = _write(tmp_path / "other", [f"k{i:03d}" for i in range(N - 1)] + ["zzz"])
    with pytest.raises(ValueError, match="does not pair with .*'k036' meets 'zzz'"):
        list(ShardStream(shard_set, 8, paired_dir=other))
    short = _write(tmp_path / "short", [f"k{i:03d}" for i in range(N - 2)])
    with pytest.raises(ValueError, match="do not hold the same shards"):
        ShardStream(shard_set, 8, paired_dir=short)


def test_endless_batches_run_over_epochs_in_full_seeded_batches(shard_set):
    """37 samples, batch 10: three full batches per epoch (the partial one is left out), then the
    next epoch in another order; the seed fixes the sequence; ``labels=False`` gives ``None``."""
    def take(seed, n=7, **kw):
        it = endless_batches(shard_set, 10, seed=seed, shuffle_buffer=5, **kw)
        return [next(it) for _ in range(n)]
    first, again = take(3), take(3)
    assert all(im.shape == (10, 4, 4, 3) and y.shape == (10,) for im, y in first)
    ids = [im[:, 0, 0, 0].tolist() for im, _ in first]
    assert ids == [im[:, 0, 0, 0].tolist() for im, _ in again] != [im[:, 0, 0, 0].tolist() for im, _ in take(4)]
    epoch0, epoch1 = sum(ids[:3], []), sum(ids[3:6], [])
    assert len(set(epoch0)) == 30 and epoch0 != epoch1
    assert all(y is None for _, y in take(3, n=2, labels=False))
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(endless_batches(shard_set, 38, seed=0))
    # 37 samples, but at most 24 per loader worker (3 of the 5 shards): no full batch of 25 ever (this
    # looped for ever before)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(endless_batches(shard_set, 25, seed=0, workers=2))
