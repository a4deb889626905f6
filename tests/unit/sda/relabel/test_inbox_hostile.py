"""The inbox against someone who can write to it: links swapped in after the scan, special files,
bombs, archives and names meant to break the scan. Each case ends as a refused (quarantinable) entry
with a reason, never as a read outside the inbox, a blocked or unbounded read, or a crashed scan."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import tarfile
import time
from pathlib import Path

import pytest

from sda.io.images import BadImage
from sda.io.untrusted_files import FileId, NotReadable, read_beneath, unlink_if_same
from sda.relabel.inbox import open_inbox, scan_inbox
from tests.support.images import random_png


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info


@pytest.fixture
def inbox(tmp_path):
    (tmp_path / "inbox" / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "inbox", tmp_path / "outside"


def test_a_folder_swapped_for_a_link_after_the_scan_is_neither_read_nor_deleted_through(inbox):
    root, outside = inbox
    (root / "a" / "img.png").write_bytes(random_png(1))
    (outside / "img.png").write_bytes(random_png(1))  # the same bytes: the hash cannot tell them apart
    (item,) = scan_inbox(root).items
    (root / "a" / "img.png").unlink()
    (root / "a").rmdir()
    (root / "a").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadImage, match="symlink: not followed"):
        item.read()
    fd = open_inbox(root)
    try:
        assert not unlink_if_same(fd, item.rel, item.file_id)
    finally:
        os.close(fd)
    assert (outside / "img.png").read_bytes() == random_png(1)


def test_a_file_swapped_for_a_fifo_or_a_link_to_dev_zero_is_refused_without_blocking(inbox):
    root, _ = inbox
    for name in ("fifo.png", "zero.png"):
        (root / name).write_bytes(random_png(2 if name == "fifo.png" else 3))
    items = {it.source: it for it in scan_inbox(root).items}
    for name in items:
        (root / name).unlink()
    os.mkfifo(root / "fifo.png")  # opening it for reading would block until a writer came
    (root / "zero.png").symlink_to("/dev/zero")
    t0 = time.monotonic()
    with pytest.raises(BadImage, match="FIFO"):
        items["fifo.png"].read()
    with pytest.raises(BadImage, match="symlink"):
        items["zero.png"].read()
    assert time.monotonic() - t0 < 5
    scan = scan_inbox(root)  # the next scan reports both, reads neither
    assert {it.source: r for it, r in scan.broken} == {
        "fifo.png": "not a regular file (a FIFO, socket or device): not read",
        "zero.png": "symlink, not followed: copy the file into the inbox instead of linking it"}


def test_reads_are_bounded_whatever_the_size_seen_before(inbox):
    root, _ = inbox
    (root / "big.png").write_bytes(b"\0" * 5000)
    fd = open_inbox(root)
    try:
        with pytest.raises(NotReadable, match="too large: 5000 bytes > relabel.max_file_bytes=1000"):
            read_beneath(fd, "big.png", 1000)
        data, fid = read_beneath(fd, "big.png", 5000)
        assert len(data) == 5000 and fid.size == 5000
    finally:
        os.close(fd)
    scan = scan_inbox(root, max_bytes=1000)
    ((it, reason),) = scan.broken
    assert it.source == "big.png" and not it.readable and "too large" in reason


def test_a_changed_file_is_not_read_as_the_scanned_one_and_not_removed(inbox):
    root, _ = inbox
    (root / "a" / "x.png").write_bytes(random_png(4))
    (item,) = scan_inbox(root).items
    (root / "a" / "x.png").write_bytes(random_png(5, size=24))  # still being uploaded, or replaced
    with pytest.raises(BadImage, match="changed since the scan"):
        item.read()
    fd = open_inbox(root)
    try:
        assert not unlink_if_same(fd, item.rel, item.file_id)
        assert (root / "a" / "x.png").exists()
        st = os.stat(root / "a" / "x.png")
        assert unlink_if_same(fd, item.rel, FileId.of(st)) and not (root / "a" / "x.png").exists()
    finally:
        os.close(fd)


def test_each_file_that_stopped_a_run_is_one_refused_entry_and_the_rest_is_scanned(inbox):
    root, _ = inbox
    (root / "good.png").write_bytes(random_png(6))
    (root / "xz.tar").write_bytes(lzma.compress(tar_bytes([(member("a.png"), random_png(7))])))
    (root / "gz.tar").write_bytes(gzip.compress(b"\0" * (64 << 20)))  # 65 KB that would inflate to 64 MiB
    deep = root
    for _ in range(1100):  # deeper than os.walk's (or os.makedirs') recursion could go
        deep = deep / "d"
        os.mkdir(deep)
    (deep / "deep.png").write_bytes(random_png(8))
    weird = member(os.fsdecode(b"caf\xe9-\xff.png"))  # not UTF-8
    (root / "names.tar").write_bytes(tar_bytes([(weird, random_png(9))]))
    try:
        scan = scan_inbox(root)
    finally:  # pytest's own clean-up (shutil.rmtree) would recurse 1,100 levels deep
        (deep / "deep.png").unlink()
        while deep != root:
            deep.rmdir()
            deep = deep.parent
    sources = sorted(it.source for it in scan.items)
    assert sources[0].startswith("d/d/") and sources[0].endswith("/deep.png") and sources[0].count("/") == 1100
    assert sources[1:] == ["good.png", "names.tar::caf\\xe9-\\xff.png"]
    assert all(s.encode("utf-8") for s in sources)  # every name can go into a Parquet row
    reasons = {it.source: r for it, r in scan.broken}
    assert set(reasons) == {"xz.tar", "gz.tar"}
    assert all(r.startswith("not a plain tar") for r in reasons.values())


def test_tar_members_refused_before_they_are_read(inbox):
    root, _ = inbox
    (root / "t.tar").write_bytes(tar_bytes([
        (member("big.png"), b"\0" * 3000),
        (member("link.png", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        (member("hard.png", tarfile.LNKTYPE, linkname="big.png"), None),
        (member("dev.png", tarfile.CHRTYPE, devmajor=1, devminor=5), None),
        (member("/abs.png"), random_png(11)),
        (member("dup.png"), random_png(12)),
        (member("dup.png"), random_png(13)),  # the same name twice: two images, each read as itself
    ]))
    scan = scan_inbox(root, max_bytes=2000)
    reasons = {it.source: r for it, r in scan.broken}
    assert "too large: 3000 bytes" in reasons["t.tar::big.png"]
    assert reasons["t.tar::link.png"] == reasons["t.tar::hard.png"] == "tar member is a link: not extracted"
    assert reasons["t.tar::dev.png"] == "tar member is a device or FIFO: not extracted"
    assert "leaves the archive" in reasons["t.tar::/abs.png"]
    dups = [it for it in scan.items if it.source == "t.tar::dup.png"]
    assert [it.read() for it in dups] == [random_png(12), random_png(13)]


def test_the_scan_hashes_what_it_reads_through_one_descriptor(inbox):
    root, _ = inbox
    (root / "a" / "x.png").write_bytes(random_png(14))
    (item,) = scan_inbox(root).items
    assert item.read() == random_png(14) and item.path == root / "a" / "x.png"
    assert item.file_id == FileId.of(os.stat(root / "a" / "x.png"))
    assert Path(item.rel) == Path("a/x.png")


def test_an_unchanged_labelled_inbox_is_not_read_again(inbox, monkeypatch):
    import sda.relabel.inbox as inbox_mod

    root, _ = inbox
    for i in range(3):
        (root / "a" / f"{i}.png").write_bytes(random_png(20 + i))
    (root / "t.tar").write_bytes(tar_bytes([(member("m.png"), random_png(30))]))
    first = scan_inbox(root)
    done = {it.sha256 for it in first.items}
    assert len(done) == 4 and set(first.index) == {"a/0.png", "a/1.png", "a/2.png", "t.tar"}

    def no_read(*a, **k):
        raise AssertionError("an unchanged, labelled file was read again")

    monkeypatch.setattr(inbox_mod, "read_beneath", no_read)
    monkeypatch.setattr(inbox_mod, "open_beneath", no_read)
    again = scan_inbox(root, skip=done, index=first.index)
    assert again.items == [] and sorted(it.source for it in again.known) == ["a/0.png", "a/1.png", "a/2.png"]
    assert again.index == first.index
    monkeypatch.undo()
    (root / "a" / "1.png").write_bytes(random_png(99))  # changed: read again, a new image
    third = scan_inbox(root, skip=done, index=again.index)
    assert [it.source for it in third.items] == ["a/1.png"]
