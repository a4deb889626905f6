"""Reading a folder that anyone may write to (the relabel inbox) without ever leaving it.

Every path is opened one component at a time, relative to the previous directory's descriptor, with
``O_NOFOLLOW``: a symlink anywhere on the path (a folder swapped for a link after the scan included)
fails the open instead of being followed. A file is ``fstat``-ed on the descriptor it is read from:
only regular files are read (a FIFO, socket or device is refused without blocking: ``O_NONBLOCK``),
and never more than ``max_bytes + 1`` bytes, whatever the size seen earlier. What was read is
identified by (device, inode, size, mtime): :func:`unlink_if_same` removes a file only while it is
still that file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["FILE_KINDS", "FileId", "HIDDEN_FOLDER", "NotReadable", "iter_tree", "open_beneath", "read_beneath", "read_fd", "readlink_beneath",
           "unlink_if_same"]

HIDDEN_FOLDER = "a hidden folder: not read"  # iter_tree's reason for a folder whose name starts with a dot

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symlink"}


class NotReadable(OSError):
    """An inbox path that is not read: a link on the way, not a regular file, too large, unreadable.
    The message says which and is meant for a quarantine row."""


@dataclass(frozen=True)
class FileId:
    """What makes "the same file": device, inode, size (bytes) and mtime (ns)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileId":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _parts(rel: str | os.PathLike[str]) -> list[str]:
    parts = PurePosixPath(os.fsdecode(rel)).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise NotReadable(f"{os.fsdecode(rel)!r}: not a path inside the inbox")
    return list(parts)


def _open_dir(root_fd: int, parts: list[str]) -> int:
    """A descriptor of the folder ``root/parts...``, no link followed (the caller closes it)."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                raise NotReadable(_why_not_dir(fd, name, err)) from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _why_not_dir(fd: int, name: str, err: OSError) -> str:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return f"folder {name!r} on the path is gone or unreadable ({err.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"folder {name!r} on the path is a symlink: not followed"
    return f"{name!r} on the path is not a folder one may enter ({err.strerror})"


def open_beneath(root_fd: int, rel: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """Open the regular file ``rel`` under the folder ``root_fd`` for reading, no link followed at
    any depth; returns ``(fd, its fstat)``. Anything else raises :class:`NotReadable`."""
    parts = _parts(rel)
    parent = _open_dir(root_fd, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as err:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except OSError:
                raise NotReadable(f"cannot open: {err.strerror}") from None
            kind = FILE_KINDS.get(stat.S_IFMT(st.st_mode))
            raise NotReadable(f"{kind}, not a regular file: not read" if kind else f"cannot open: {err.strerror}") \
                from None
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotReadable(f"{FILE_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')}, not a regular file: not read")
    return fd, st


def read_fd(fd: int, max_bytes: int, what: str = "file", size_hint: int = 0) -> bytes:
    """At most ``max_bytes`` bytes of ``fd`` from its current offset; one byte more is an error.
    ``size_hint`` (the fstat size): read in one piece of that size, so a large file is held once, not
    as chunks and their join."""
    chunks, n = [], 0
    first = min(size_hint + 1 if size_hint > 0 else 1 << 20, max_bytes + 1)
    while n <= max_bytes:
        b = os.read(fd, first if not chunks else min(1 << 20, max_bytes + 1 - n))
        if not b:
            break
        chunks.append(b)
        n += len(b)
    if n > max_bytes:
        raise NotReadable(f"{what} too large: more than relabel.max_file_bytes={max_bytes} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_beneath(root_fd: int, rel: str | os.PathLike[str], max_bytes: int) -> tuple[bytes, FileId]:
    """The bytes of the regular file ``rel`` under ``root_fd`` (:func:`open_beneath`) and its
    :class:`FileId`; a file larger than ``max_bytes`` (by fstat, or by what it gives) is refused."""
    fd, st = open_beneath(root_fd, rel)
    try:
        if st.st_size > max_bytes:
            raise NotReadable(f"file too large: {st.st_size} bytes > relabel.max_file_bytes={max_bytes}")
        return read_fd(fd, max_bytes, size_hint=st.st_size), FileId.of(st)
    finally:
        os.close(fd)


def readlink_beneath(root_fd: int, rel: str | os.PathLike[str]) -> str:
    """The target of the symlink ``rel`` under ``root_fd`` (its folders entered with no link
    followed); ``"?"`` when it cannot be read."""
    parts = _parts(rel)
    try:
        parent = _open_dir(root_fd, parts[:-1])
    except OSError:
        return "?"
    try:
        return os.readlink(parts[-1], dir_fd=parent)
    except OSError:
        return "?"
    finally:
        os.close(parent)


def unlink_if_same(root_fd: int, rel: str | os.PathLike[str], expected: FileId | None) -> bool:
    """Remove ``rel`` under ``root_fd`` if it is still ``expected`` (``None``: a symlink, removed as
    a link, its target untouched); returns whether it was removed. A changed or vanished file stays."""
    parts = _parts(rel)
    try:
        parent = _open_dir(root_fd, parts[:-1])
    except (NotReadable, OSError):
        return False
    try:
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        same = stat.S_ISLNK(st.st_mode) if expected is None else (
            stat.S_ISREG(st.st_mode) and FileId.of(st) == expected)
        if same:
            os.unlink(parts[-1], dir_fd=parent)
        return same
    finally:
        os.close(parent)


def iter_tree(root_fd: int) -> tuple[list[tuple[str, os.stat_result]], list[tuple[str, str]]]:
    """Every entry under ``root_fd`` but folders, depth first without recursion (any depth), as
    ``(relative path, lstat)`` sorted by path bytes; links are listed, never entered; hidden
    folders are not entered. Also ``(folder, reason)`` for each folder not read: a hidden one
    (:data:`HIDDEN_FOLDER`) or one that could not be listed, so that nothing is left out unsaid."""
    found: list[tuple[str, os.stat_result]] = []
    unlisted: list[tuple[str, str]] = []
    stack: list[str] = [""]
    while stack:
        rel = stack.pop()
        try:
            fd = _open_dir(root_fd, _parts(rel)) if rel else os.dup(root_fd)
        except (NotReadable, OSError) as err:
            unlisted.append((rel, str(err)))
            continue
        entries: list[tuple[str, os.stat_result]] = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    path = f"{rel}/{e.name}" if rel else e.name
                    try:
                        entries.append((path, os.stat(e.name, dir_fd=fd, follow_symlinks=False)))
                    except OSError as err:
                        unlisted.append((path, f"cannot stat: {err.strerror}"))
        except OSError as err:
            unlisted.append((rel, f"cannot list: {err.strerror}"))
            continue
        finally:
            os.close(fd)
        for path, st in entries:
            name = path.rsplit("/", 1)[-1]
            if stat.S_ISDIR(st.st_mode):
                if name.startswith("."):
                    unlisted.append((path, HIDDEN_FOLDER))
                else:
                    stack.append(path)
            else:
                found.append((path, st))
    found.sort(key=lambda p: os.fsencode(p[0]))
    unlisted.sort(key=lambda p: os.fsencode(p[0]))
    return found, unlisted
