"""sda.io.atomic: a file or folder appears whole or not at all; a failed write leaves the previous
version and no temporary; what a killed writer left is removed by the next writer of that name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import resource
import signal

import pytest

from sda.io.atomic import (DISK_FULL, atomic_copy, atomic_dir, atomic_file, atomic_write_bytes, atomic_write_json,
                           clean_stale_temps, replace_dir, sha256_file)


class Boom(Exception):
    pass


def test_a_file_block_that_succeeds_replaces_the_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_file(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("new")
        assert final.read_text() == "old"  # readers see the old version until the block ends
    assert final.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_file_block_that_raises_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(Boom), atomic_file(final) as tmp:
        tmp.write_text("half")
        raise Boom
    assert final.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_file_write_removes_the_folders_it_made_but_not_those_it_found(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(Boom), atomic_file(tmp_path / "kept" / "a" / "b" / "part.parquet") as tmp:
        tmp.write_bytes(b"x")
        raise Boom
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_a_folder_block_replaces_the_whole_folder(tmp_path):
    final = tmp_path / "set"
    final.mkdir()
    (final / "old-shard.tar").write_bytes(b"old")
    with atomic_dir(final) as tmp:
        assert not any(tmp.iterdir())  # starts empty, not as a copy of the old version
        (tmp / "new-shard.tar").write_bytes(b"new")
        assert (final / "old-shard.tar").exists()
    assert [p.name for p in final.iterdir()] == ["new-shard.tar"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_a_folder_block_that_raises_keeps_the_old_folder_or_none(tmp_path):
    final = tmp_path / "set"
    with pytest.raises(Boom), atomic_dir(final) as tmp:
        (tmp / "a").write_bytes(b"half")
        raise Boom
    assert not any(tmp_path.iterdir())  # absent before, absent after
    final.mkdir()
    (final / "a").write_bytes(b"old")
    with pytest.raises(Boom), atomic_dir(final) as tmp:
        (tmp / "a").write_bytes(b"half")
        raise Boom
    assert (final / "a").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["set"]


def test_the_next_folder_writer_removes_a_killed_writers_temporaries_of_that_name_only(tmp_path):
    (tmp_path / ".set.tmp-dead1").mkdir()
    (tmp_path / ".set.tmp-dead1" / "shard").write_bytes(b"half")
    (tmp_path / ".set.tmp-dead2").write_bytes(b"half")
    (tmp_path / ".other.tmp-live").mkdir()  # another name's writer: not ours to remove
    with atomic_dir(tmp_path / "set") as tmp:
        (tmp / "x").write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-live", "set"]


def test_a_file_writer_leaves_another_writers_temporary_alone_and_clean_stale_temps_removes_it(tmp_path):
    """Another process may be writing the same name right now: only clean_stale_temps, called where a
    stage is the only writer, removes what a killed writer left."""
    (tmp_path / ".out.json.tmp-deadbeef").write_bytes(b"{\"half")
    atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.json.tmp-deadbeef", "out.json"]
    assert clean_stale_temps(tmp_path, "out.json") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_stale_temporaries_are_counted_and_removed_by_name_and_depth(tmp_path):
    (tmp_path / "sub").mkdir()
    for p in (tmp_path / ".a.tmp-1", tmp_path / ".b.tmp-2", tmp_path / "sub" / ".a.tmp-3"):
        p.write_bytes(b"x")
    (tmp_path / "a").write_bytes(b"final")
    (tmp_path / ".a.json").write_bytes(b"not a temporary")
    assert clean_stale_temps(tmp_path, "a") == 1
    assert clean_stale_temps(tmp_path, recursive=True) == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [".a.json", "a", "sub"]
    assert clean_stale_temps(tmp_path / "missing") == 0


def test_replace_dir_moves_a_finished_folder_over_the_old_one_by_renames(tmp_path):
    src, final = tmp_path / "built", tmp_path / "deep" / "final"
    src.mkdir()
    (src / "f").write_text("1")
    replace_dir(src, final)  # no old version: a plain rename, parents made
    assert (final / "f").read_text() == "1" and not src.exists()
    src.mkdir()
    (src / "g").write_text("2")
    replace_dir(src, final)
    assert [p.name for p in final.iterdir()] == ["g"] and [p.name for p in final.parent.iterdir()] == ["final"]


def test_json_is_indented_in_the_given_key_order_with_a_final_newline(tmp_path):
    atomic_write_json(tmp_path / "d" / "m.json", {"z": 1, "a": [1, 2]})
    text = (tmp_path / "d" / "m.json").read_text()
    assert text == '{\n  "z": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n' and json.loads(text) == {"z": 1, "a": [1, 2]}


def test_a_copy_is_whole_and_its_sha256_is_the_files(tmp_path):
    data = bytes(range(256)) * 9000  # over 2 MiB: more than one read chunk
    (tmp_path / "src").write_bytes(data)
    atomic_copy(tmp_path / "src", tmp_path / "out" / "dst")
    assert (tmp_path / "out" / "dst").read_bytes() == data
    assert sha256_file(tmp_path / "out" / "dst") == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing", tmp_path / "out" / "other")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dst"]


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG in this process (as on a full disk), the soft limit only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_write_that_does_not_fit_names_the_file_and_the_size_and_keeps_the_old_one(tmp_path):
    final = tmp_path / "labels.parquet"
    final.write_bytes(b"old")
    with _file_size_limit(1000), pytest.raises(OSError) as err:
        atomic_write_bytes(final, b"x" * 5000)
    assert err.value.errno in DISK_FULL and err.value.errno == errno.EFBIG
    assert err.value.filename == str(final) and err.value.needed_bytes == 5000
    assert final.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["labels.parquet"]
