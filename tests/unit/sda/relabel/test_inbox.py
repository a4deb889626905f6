"""The inbox: what counts as a new image, and how every kind of bad or odd file is handled."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sda.io.images import BadImage, center_crop_arr, decode_image
from sda.relabel.inbox import SYMLINK_REASON, Readiness, display_path, readiness, safe_file_name, scan_inbox

LIMIT = 40_000_000


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def rgb(seed: int = 0, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_header_png(w: int = 50_000, h: int = 50_000) -> bytes:
    """A valid PNG header that claims w x h pixels, with one row of data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("data, reason, cut_short", [
    (b"", "empty file", True),
    (b"hello, I am a text file", "not an image", False),
    (png_bytes(rgb())[:-40], "truncated or corrupt", True),
    (png_bytes(rgb())[:60], "truncated or corrupt", True),
    (huge_header_png(), "too many pixels: .*2500000000 pixels", False),
    (png_bytes(rgb(size=4)), "too small", False),
])
def test_bad_bytes_raise_with_a_reason(data, reason, cut_short):
    with pytest.raises(BadImage, match=reason) as err:
        decode_image(data, max_pixels=LIMIT, min_side=8)
    assert err.value.cut_short is cut_short


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


def test_truncated_jpeg_is_rejected():
    buf = io.BytesIO()
    Image.fromarray(rgb(size=64)).save(buf, format="JPEG", quality=90)
    with pytest.raises(BadImage, match="truncated or corrupt"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], max_pixels=LIMIT)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_odd_modes_are_converted_not_rejected():
    grey = np.linspace(0, 255, 400).reshape(20, 20).astype(np.uint8)
    cases = {
        "L": _encode(Image.fromarray(grey, "L"), "PNG"),
        "RGBA": _encode(Image.fromarray(np.dstack([rgb(), np.full((20, 20), 128, np.uint8)]), "RGBA"), "PNG"),
        "CMYK": _encode(Image.fromarray(rgb()).convert("CMYK"), "JPEG"),
        "P": _encode(Image.fromarray(rgb()).convert("P"), "PNG"),
        "I;16": _encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "WEBP": _encode(Image.fromarray(rgb()), "WEBP"),
    }
    for name, data in cases.items():
        img, mode = decode_image(data, max_pixels=LIMIT)
        # greyscale stays single-channel until resized (a third of the memory); the rest is RGB
        assert img.mode == ("L" if name in ("L", "I;16") else "RGB") and img.size == (20, 20), name
        assert center_crop_arr(img, 16).shape == (16, 16, 3)
        if name != "WEBP":
            assert mode.startswith(name.split(";")[0]), (name, mode)
    # 16-bit is rescaled, not clipped to white: the darkest and brightest pixels survive
    img, _ = decode_image(cases["I;16"], max_pixels=LIMIT)
    arr = np.asarray(img)
    assert arr.min() <= 1 and arr.max() >= 254 and 100 < arr.mean() < 155


def test_model_images_are_a_centre_crop_at_the_model_size():
    """Red | green | blue thirds, 60 x 30: the shorter side goes to 16, the middle 16 columns are
    kept: green in the middle, only a sliver of red on the left and of blue on the right."""
    arr = np.zeros((30, 60, 3), np.uint8)
    for i in range(3):
        arr[:, 20 * i: 20 * (i + 1), i] = 255
    out = center_crop_arr(Image.fromarray(arr), 16).astype(int)
    assert out.shape == (16, 16, 3)
    assert (np.abs(out[:, 4:12] - [0, 255, 0]) <= 8).all()  # the centre is the green third
    assert out[:, 0, 0].min() > 100 and out[:, 0, 2].max() < 20  # left edge: red, no blue
    assert out[:, -1, 2].min() > 100 and out[:, -1, 0].max() < 20  # right edge: blue, no red
    assert (out == out[:1]).all()  # every row alike: nothing was cropped or shifted vertically


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
