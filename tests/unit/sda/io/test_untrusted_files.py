"""sda.io.untrusted_files: a folder anyone may write to is read without leaving it: no link followed at
any depth, regular files only and never blocking, reads bounded whatever the size seen before, and a
file removed only while it is still the file that was read."""

from __future__ import annotations

import os
import stat
import time

import pytest

from sda.io.untrusted_files import (FileId, NotReadable, iter_tree, open_beneath, read_beneath, read_fd,
                                    readlink_beneath, unlink_if_same)


@pytest.fixture
def root(tmp_path):
    """(root folder, its descriptor): ``root/a/x.png`` inside, ``outside/secret`` beside it."""
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "x.png").write_bytes(b"inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    fd = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path / "root", fd
    os.close(fd)


def test_a_file_beneath_is_read_with_its_identity(root):
    path, fd = root
    data, fid = read_beneath(fd, "a/x.png", 100)
    assert data == b"inside" and fid == FileId.of(os.stat(path / "a" / "x.png")) and fid.size == 6


@pytest.mark.parametrize("rel", ["../outside/secret", "a/../../outside/secret", "/etc/passwd", ""])
def test_a_path_that_leaves_the_folder_is_refused(root, rel):
    _, fd = root
    with pytest.raises(NotReadable, match="not a path inside the inbox"):
        read_beneath(fd, rel, 100)


def test_a_link_as_the_file_is_not_followed(root):
    path, fd = root
    (path / "link.png").symlink_to(path.parent / "outside" / "secret")
    with pytest.raises(NotReadable, match="a symlink, not a regular file"):
        read_beneath(fd, "link.png", 100)


def test_a_link_as_a_folder_on_the_path_is_not_followed(root):
    path, fd = root
    (path / "b").symlink_to(path.parent / "outside", target_is_directory=True)
    with pytest.raises(NotReadable, match="folder 'b' on the path is a symlink: not followed"):
        read_beneath(fd, "b/secret", 100)
    with pytest.raises(NotReadable, match="'x.png' on the path is not a folder"):
        read_beneath(fd, "a/x.png/y", 100)
    with pytest.raises(NotReadable, match="gone or unreadable"):
        read_beneath(fd, "nope/y", 100)


def test_a_fifo_is_refused_without_blocking_and_a_folder_is_not_read(root):
    path, fd = root
    os.mkfifo(path / "pipe.png")  # opening it for reading without O_NONBLOCK would wait for a writer
    t0 = time.monotonic()
    with pytest.raises(NotReadable, match="a FIFO"):
        read_beneath(fd, "pipe.png", 100)
    assert time.monotonic() - t0 < 5
    with pytest.raises(NotReadable, match="a folder, not a regular file"):
        open_beneath(fd, "a")


def test_reads_stop_one_byte_past_the_limit_whatever_the_size_hint(tmp_path):
    (tmp_path / "f").write_bytes(b"z" * 3000)
    with open(tmp_path / "f", "rb") as f:
        assert read_fd(f.fileno(), 3000, size_hint=3000) == b"z" * 3000  # exactly at the limit: read
    with open(tmp_path / "f", "rb") as f:
        with pytest.raises(NotReadable, match="too large: more than relabel.max_file_bytes=2999"):
            read_fd(f.fileno(), 2999, size_hint=10)  # a file that grew since its size was seen
    with open(tmp_path / "f", "rb") as f:
        assert read_fd(f.fileno(), 10**9) == b"z" * 3000  # no hint: read in chunks, joined


def test_a_file_over_the_limit_by_its_size_is_refused_before_it_is_read(root):
    _, fd = root
    with pytest.raises(NotReadable, match="file too large: 6 bytes > relabel.max_file_bytes=5"):
        read_beneath(fd, "a/x.png", 5)


def test_a_links_target_is_read_without_following_links_on_the_way(root):
    path, fd = root
    (path / "a" / "l").symlink_to("/etc/passwd")
    (path / "b").symlink_to(path / "a", target_is_directory=True)
    assert readlink_beneath(fd, "a/l") == "/etc/passwd"
    assert readlink_beneath(fd, "b/l") == "?"  # reached through a link: not read
    assert readlink_beneath(fd, "a/x.png") == "?"  # not a link


def test_a_file_is_removed_only_while_it_is_the_file_that_was_read(root):
    path, fd = root
    _, fid = read_beneath(fd, "a/x.png", 100)
    (path / "a" / "x.png").write_bytes(b"replaced!")  # another size: another file
    assert not unlink_if_same(fd, "a/x.png", fid) and (path / "a" / "x.png").exists()
    _, fid = read_beneath(fd, "a/x.png", 100)
    assert unlink_if_same(fd, "a/x.png", fid) and not (path / "a" / "x.png").exists()
    assert not unlink_if_same(fd, "a/x.png", fid)  # gone: nothing to do


def test_a_link_is_removed_as_a_link_and_its_target_stays(root):
    path, fd = root
    secret = path.parent / "outside" / "secret"
    (path / "l").symlink_to(secret)
    assert not unlink_if_same(fd, "l", FileId.of(os.stat(secret)))  # a link is never "the file read"
    assert unlink_if_same(fd, "l", None)
    assert not (path / "l").is_symlink() and secret.read_bytes() == b"secret"
    (path / "b").symlink_to(path.parent / "outside", target_is_directory=True)
    assert not unlink_if_same(fd, "b/secret", None) and secret.exists()  # nothing removed through a link


def test_the_tree_lists_files_and_links_in_byte_order_without_entering_links_or_hidden_folders(root):
    path, fd = root
    (path / "a" / "B.png").write_bytes(b"b")
    (path / "a" / "deep" / "er").mkdir(parents=True)
    (path / "a" / "deep" / "er" / "z.png").write_bytes(b"z")
    (path / ".hidden").mkdir()
    (path / ".hidden" / "h.png").write_bytes(b"h")
    (path / ".dotfile").write_bytes(b"d")
    (path / "out").symlink_to(path.parent / "outside", target_is_directory=True)
    found, unlisted = iter_tree(fd)
    assert [rel for rel, _ in found] == [".dotfile", "a/B.png", "a/deep/er/z.png", "a/x.png", "out"]
    modes = {rel: st.st_mode for rel, st in found}  # lstat: the link itself
    assert stat.S_ISLNK(modes["out"]) and stat.S_ISREG(modes["a/x.png"])
    assert unlisted == [(".hidden", "a hidden folder: not read")]  # not entered, and said


# moved from tests/unit/sda/relabel/test_inbox_hostile.py
def test_an_unlistable_folder_is_reported_not_skipped_silently(tmp_path, monkeypatch):
    root = tmp_path / "inbox"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"png")
    (root / "b").mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    real_scandir = os.scandir

    def scandir(target):  # as for a folder without the x bit for the service's user (root ignores modes)
        if isinstance(target, int) and os.stat(target).st_ino == os.stat(root / "b").st_ino:
            raise PermissionError(13, "Permission denied")
        return real_scandir(target)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        found, unlisted = iter_tree(fd)
    finally:
        os.close(fd)
    assert [p for p, _ in found] == ["a/x.png"] and unlisted == [("b", "cannot list: Permission denied")]
