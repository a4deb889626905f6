"""Atomic outputs: every file and folder the project writes appears whole or not at all.

One scheme for all of them: the new version is written under a hidden temporary name in the same
folder, ``.<name>.tmp-<token>`` (hidden, so that Parquet / WebDataset readers of the folder skip
it), flushed to disk, then renamed over ``<name>``; the folder is fsync'd after the rename. A
writer killed half-way leaves only such a temporary: the next writer of a folder of the same name
removes it (:func:`atomic_dir`), and so does :func:`clean_stale_temps`, which the stages and the
relabel store call where they are the only writer. A file's writer (:func:`atomic_file`) leaves
other temporaries of its name alone: another process may be writing that name right now.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "DISK_FULL",
    "TMP_MARK",
    "atomic_copy",
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "clean_stale_temps",
    "fsync_dir",
    "replace_dir",
    "sha256_file",
]

TMP_MARK = ".tmp-"
# a full disk, a full quota, a file size limit: the user's to fix, not a crash
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _temp_prefix(name: str) -> str:
    return f".{name}{TMP_MARK}"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames) to disk; a no-op where the OS does not allow it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def clean_stale_temps(parent: str | os.PathLike[str], name: str = "*", *, recursive: bool = False) -> int:
    """Remove the temporaries that killed writers of ``parent/<name>`` left behind (``name`` may be
    a glob; ``recursive`` looks in sub-folders too); returns how many. Only call it where no other
    writer of those names runs (a running writer's temporary looks the same)."""
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    pattern = f"{_temp_prefix(name)}*"
    found = sorted(parent.rglob(pattern) if recursive else parent.glob(pattern), reverse=True)
    for p in found:
        _remove(p)
    return len(found)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_file(path) as tmp``: write the file ``tmp`` (any writer that takes a path);
    it replaces ``path`` when the block succeeds, and is removed when it raises."""
    final = Path(final)
    made = _missing_parents(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{_temp_prefix(final.name)}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        for folder in made:  # no empty folder left behind (an empty hive partition reads as no columns)
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            err.filename = str(final)  # the file that could not be written, not its temporary
        raise
    fsync_dir(final.parent)


def _missing_parents(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` only if the block succeeds.

    A crash or kill inside the block leaves ``final`` as it was (or absent); the temporary is
    removed on exceptions and by the next writer after a kill.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final.name), dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move the finished folder ``src`` to ``final`` (same file system), replacing what was there,
    by renames only: readers see the old or the new version, never a mix."""
    src, final = Path(src), Path(final)
    fsync_dir(src)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f"{_temp_prefix(final.name)}old-{os.getpid()}")
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)
    fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`). On a full disk the OSError carries
    ``needed_bytes``, the size that did not fit."""
    try:
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        if err.errno in DISK_FULL:
            err.needed_bytes = len(data)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON plus a newline, atomically; key order as given."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the file ``src`` to ``dst`` atomically (``dst`` is whole or absent)."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
