"""The inbox: what counts as a new image, and how every kind of bad or odd file is handled (decoding itself:
tests/unit/sda/io/test_images.py)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sda.io.images import BadImage
from sda.relabel.inbox import SYMLINK_REASON, Readiness, display_path, readiness, safe_file_name, scan_inbox
from tests.support.images import png_bytes, rgb


CUT = BadImage("truncated or corrupt image: ...", cut_short=True)
NOT_IMAGE = BadImage("not an image")


@pytest.mark.parametrize("name, age, member, decoded, expected", [
    # before the bytes are read (the scan), or read and usable: the name and the age
    (".x.jpg.part", 1e6, False, None, Readiness.HIDDEN),
    (".cat.png", 1e6, False, CUT, Readiness.HIDDEN),
    ("cat.png", 1.0, False, None, Readiness.TOO_NEW),
    ("cat.png", 5.0, False, None, Readiness.READY),
    # after decoding failed
    ("cat.png", 5.0, False, CUT, Readiness.UPLOADING),        # cut short, recent: wait for the upload
    ("cat.png", 100.0, False, CUT, Readiness.BAD),            # cut short, stalled for good
    ("cat.png", 5.0, True, CUT, Readiness.BAD),               # a tar member: its tar was complete
    ("cat.png", 5.0, False, NOT_IMAGE, Readiness.BAD),        # not an image is not an upload
    ("cat.png", 1.0, False, CUT, Readiness.TOO_NEW),          # too new wins over everything decoded
])
def test_the_readiness_rule(name, age, member, decoded, expected):
    """relabel.min_age_seconds = 3, relabel.upload_grace_seconds = 60."""
    assert readiness(name, age_s=age, min_age_s=3.0, upload_grace_s=60.0, member=member,
                     decoded=decoded) is expected


def test_safe_file_name_cannot_escape_or_hide():
    sha = "ab" * 32
    for src in ["../../etc/passwd", "a/b/..", "x.tar::../../evil.png", "spaced name ü名.png", ".hidden",
                "new\nline.png", "bad\\xff.png"]:
        name = safe_file_name(src, sha)
        assert "/" not in name and "\n" not in name and ".." not in name and not name.startswith(".")
        assert name.startswith(sha[:16])


def _touch_old(p: Path) -> None:
    os.utime(p, (1_000_000, 1_000_000))


def test_scan_finds_nested_images_tar_members_and_dedupes(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "a" / "deep er").mkdir(parents=True)
    same = png_bytes(rgb(1))
    (inbox / "a" / "one.png").write_bytes(same)
    (inbox / "a" / "deep er" / "copy of one ü.PNG").write_bytes(same)  # same bytes: one item
    (inbox / "a" / "two..weird.jpg").write_bytes(png_bytes(rgb(2)))
    (inbox / "notes.txt").write_text("not an image")
    (inbox / ".upload.jpg.part").write_bytes(b"partial")
    (inbox / "link.png").symlink_to(inbox / "a" / "one.png")
    (inbox / "linked dir").symlink_to(inbox / "a", target_is_directory=True)
    (inbox / os.fsdecode(b"bytes\xffname.png")).write_bytes(png_bytes(rgb(4)))
    with tarfile.open(inbox / "batch.tar", "w") as tar:
        for key, seed in [("s1", 3), ("../../s2", 5)]:
            data = png_bytes(rgb(seed))
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("s1.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    for p in inbox.rglob("*"):
        if p.is_file() and not p.is_symlink():
            _touch_old(p)

    scan = scan_inbox(inbox, min_age_s=5)
    sources = [it.source for it in scan.items]
    assert sources == ["a/deep er/copy of one ü.PNG", "a/two..weird.jpg", "batch.tar::s1.png",
                       "bytes\\xffname.png"]
    assert scan.duplicates == 1
    assert sorted(scan.ignored) == [".upload.jpg.part", "notes.txt"]
    # symlinks, to a file or a folder, are reported for quarantine and never followed; so is a tar
    # member whose name leaves the archive
    assert scan.symlinks == ["link.png", "linked dir"]
    reasons = {it.source: r for it, r in scan.broken}
    assert reasons["link.png"] == reasons["linked dir"] == SYMLINK_REASON
    assert "leaves the archive" in reasons["batch.tar::../../s2.png"]
    assert [it.size for it, _ in scan.broken] == [0, 0, 0]
    assert scan_inbox(inbox, skip={it.sha256 for it, _ in scan.broken}).broken == []  # known next time
    members = [it for it in scan.items if it.member]
    assert all(it.read() and it.path.name == "batch.tar" for it in members)
    assert len({it.sha256 for it in scan.items}) == len(scan.items)

    # what is in `skip` is not offered again; a fresh file is left for later
    again = scan_inbox(inbox, skip={scan.items[0].sha256}, min_age_s=5)
    assert scan.items[0].sha256 not in {it.sha256 for it in again.items}
    assert {it.source for it in again.known} >= {"a/one.png", "a/deep er/copy of one ü.PNG"}
    (inbox / "fresh.png").write_bytes(png_bytes(rgb(9)))
    assert scan_inbox(inbox, min_age_s=5).too_new == ["fresh.png"]


def test_scan_reports_a_broken_tar_and_a_missing_inbox(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.tar").write_bytes(b"\x00garbage" * 100)
    scan = scan_inbox(tmp_path / "in")
    assert [it.source for it, _ in scan.broken] == ["broken.tar"]
    assert "not a plain tar" in scan.broken[0][1]
    with pytest.raises(FileNotFoundError, match="relabel.inbox"):
        scan_inbox(tmp_path / "nope")


def test_display_path_keeps_undecodable_bytes_visible(tmp_path):
    p = tmp_path / os.fsdecode(b"x\xfey.png")
    assert display_path(p, tmp_path) == "x\\xfey.png"
