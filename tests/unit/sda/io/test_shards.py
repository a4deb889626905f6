import json

import numpy as np
import pytest

from sda.io.atomic import atomic_dir, atomic_write_json, sha256_file
from sda.io.shards import Sample, iter_batches, load_shards, read_manifest, read_positions, verify_shards, write_shards


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Sample(f"k{i:04d}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), i % 3, {"i": i}) for i in range(n)]


def test_round_trip_and_manifest(tmp_path):
    samples = _samples(23)
    with atomic_dir(tmp_path / "set") as tmp:
        m = write_shards(samples, tmp, maxcount=10, meta={"who": "test"})
    assert [s["count"] for s in m["shards"]] == [10, 10, 3]
    assert m["classes"] == {"0": 8, "1": 8, "2": 7}
    assert read_manifest(tmp_path / "set") == m
    for e in m["shards"]:
        assert sha256_file(tmp_path / "set" / e["name"]) == e["sha256"]
    got = load_shards(tmp_path / "set")
    assert got.keys == [s.key for s in samples]
    assert np.array_equal(got.images, np.stack([s.image for s in samples]))
    assert got.labels.tolist() == [s.label for s in samples]
    assert got.metas[5] == {"i": 5}
    assert [len(b) for b in iter_batches(tmp_path / "set", 9)] == [9, 9, 5]


def test_read_positions_reads_the_samples_at_those_places_and_only_their_shards(tmp_path):
    samples = _samples(23)
    with atomic_dir(tmp_path / "set") as tmp:
        m = write_shards(samples, tmp, maxcount=10)
    got = read_positions(tmp_path / "set", [22, 3, 11, 3, 9, 10])  # any order, a duplicate
    assert [s.key for s in got] == ["k0003", "k0009", "k0010", "k0011", "k0022"]  # the set's order, once each
    for s in got:
        want = samples[int(s.key[1:])]
        assert np.array_equal(s.image, want.image) and s.label == want.label and s.meta == want.meta
    (tmp_path / "set" / m["shards"][1]["name"]).unlink()  # the shard of 10-19: not opened for positions outside it
    assert [s.key for s in read_positions(tmp_path / "set", [0, 20])] == ["k0000", "k0020"]
    assert read_positions(tmp_path / "set", []) == []
    with pytest.raises(IndexError, match=r"positions must lie in \[0, 23\); got 0..23"):
        read_positions(tmp_path / "set", [0, 23])


def test_same_samples_same_bytes(tmp_path):
    for name in ("a", "b"):
        with atomic_dir(tmp_path / name) as tmp:
            write_shards(_samples(12), tmp, maxcount=5)
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [e["sha256"] for e in a["shards"]] == [e["sha256"] for e in b["shards"]]


def test_duplicate_key_and_bad_image_rejected(tmp_path):
    s = _samples(2)
    s[1].key = s[0].key
    with pytest.raises(ValueError, match="duplicate key"):
        with atomic_dir(tmp_path / "x") as tmp:
            write_shards(s, tmp)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="uint8"):
        with atomic_dir(tmp_path / "y") as tmp:
            write_shards([Sample("a", np.zeros((4, 4, 3), np.float32))], tmp)


def test_failed_writer_keeps_previous_version(tmp_path):
    with atomic_dir(tmp_path / "set") as tmp:
        write_shards(_samples(5), tmp)
    before = read_manifest(tmp_path / "set")

    def boom():
        yield from _samples(3, seed=1)
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "set") as tmp:
            write_shards(boom(), tmp)
    assert read_manifest(tmp_path / "set") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary left


def test_verify_detects_tampering(tmp_path):
    with atomic_dir(tmp_path / "set") as tmp:
        m = write_shards(_samples(6), tmp, maxcount=3)
    verify_shards(tmp_path / "set")
    shard = tmp_path / "set" / m["shards"][1]["name"]
    shard.write_bytes(shard.read_bytes()[:-700])
    with pytest.raises(ValueError, match="does not match its manifest"):
        verify_shards(tmp_path / "set")


def test_missing_manifest_message(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished shard set"):
        load_shards(tmp_path / "half")


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "m.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.json"]
