"""New target images as they arrive: find them in an inbox folder and hash them (decoding:
:func:`sda.io.images.decode_image`).

An inbox is a folder tree of image files (``.jpg .jpeg .png .webp``) and WebDataset / plain ``.tar``
archives whose image members count as images. Every image is identified by the sha256 of its bytes,
so the same picture under two names, or a file seen again on the next run, is one item.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sda.io.atomic import sha256_file
from sda.io.images import BadImage, IMAGE_SUFFIXES

__all__ = [
    "SYMLINK_REASON",
    "InboxItem",
    "Scan",
    "display_path",
    "safe_file_name",
    "scan_inbox",
]

TAR_SUFFIXES: frozenset[str] = frozenset({".tar"})
# Nothing outside the inbox is read, so a symlink (to a file or a folder) is reported, not labelled.
SYMLINK_REASON = "symlink, not followed: copy the file into the inbox instead of linking it"


@dataclass(frozen=True)
class InboxItem:
    """One candidate image: a file, or a member of a tar (``member`` set).

    ``source`` is the display path relative to the inbox (``a/b.tar::key.jpg`` for tar members);
    ``path`` the file on disk; ``sha256``/``size`` describe the image bytes themselves. A symlink
    (``link`` true) is never followed: its ``sha256`` hashes its path and target, its size is 0.
    """

    source: str
    path: Path
    sha256: str
    size: int
    member: str | None = None
    link: bool = False

    def read(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with tarfile.open(self.path) as tar:
            f = tar.extractfile(self.member)
            if f is None:
                raise BadImage(f"tar member {self.member!r} is not a regular file")
            return f.read()


@dataclass
class Scan:
    """What :func:`scan_inbox` found: candidate ``items`` (deduplicated by content), files whose
    hash was in ``skip`` (``known``: files and tars, not tar members), files left for later
    (too new), files that are not images (``ignored``), and what is refused before decoding
    (``broken``: (item, reason) for unreadable tars, the tar itself as the item, and for symlinks,
    which are not followed: :data:`SYMLINK_REASON`)."""

    items: list[InboxItem]
    known: list[InboxItem]
    too_new: list[str]
    ignored: list[str]
    broken: list[tuple[InboxItem, str]]
    duplicates: int

    @property
    def symlinks(self) -> list[str]:
        return [it.source for it, _ in self.broken if it.link]


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as valid UTF-8 text: undecodable bytes of a file name become
    ``\\xNN`` escapes instead of failing a Parquet write later."""
    rel = os.fsencode(path.relative_to(root))
    return rel.decode("utf-8", errors="backslashreplace")


def safe_file_name(source: str, sha256: str, max_len: int = 80) -> str:
    """A flat, harmless file name for a quarantined copy: ``<sha256[:16]>-<sanitised basename>``.
    Separators, ``..``, control characters and leading dots cannot survive."""
    base = source.replace("::", "/").rsplit("/", 1)[-1]
    clean = "".join(c if (c.isalnum() or c in "-_.") and c.isprintable() else "_" for c in base)
    clean = clean.replace("..", "_").lstrip(".") or "file"
    return f"{sha256[:16]}-{clean[-max_len:]}"


def _walk(inbox: Path) -> Iterator[Path]:
    """Regular files and symlinks (to files or folders, not followed) under ``inbox``, sorted by
    relative path. Hidden folders are not entered."""
    found = []
    for dirpath, dirnames, filenames in os.walk(inbox, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [p for p in (Path(dirpath) / n for n in dirnames) if p.is_symlink()]
        found += [p for p in (Path(dirpath) / n for n in filenames) if p.is_symlink() or p.is_file()]
    yield from sorted(found, key=lambda p: os.fsencode(p.relative_to(inbox)))


def _tar_members(path: Path, root: Path) -> Iterator[InboxItem]:
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile() or Path(m.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            f = tar.extractfile(m)
            data = f.read() if f is not None else b""
            yield InboxItem(source=f"{display_path(path, root)}::{m.name}", path=path,
                            sha256=hashlib.sha256(data).hexdigest(), size=len(data), member=m.name)


def scan_inbox(inbox: str | os.PathLike[str], *, skip: set[str] | frozenset[str] = frozenset(),
               min_age_s: float = 0.0, now: float | None = None) -> Scan:
    """Every image in ``inbox`` whose sha256 is not in ``skip``, in sorted path order.

    Hidden files and files that are neither images nor tars by their suffix are listed in ``ignored``;
    symlinks go to ``broken`` (to be quarantined: the user learns why they were not labelled).
    Files modified less than ``min_age_s`` seconds ago are reported in ``too_new`` and left for the
    next scan. A tar whose own sha256 is in ``skip`` (quarantined earlier) is not opened again.
    """
    root = Path(inbox)
    if not root.is_dir():
        raise FileNotFoundError(f"inbox {root} is not a folder: create it or set relabel.inbox")
    now = time.time() if now is None else now
    items: list[InboxItem] = []
    seen = set(skip)
    known: list[InboxItem] = []
    too_new, ignored, broken, dups = [], [], [], 0
    for p in _walk(root):
        src = display_path(p, root)
        suffix = p.suffix.lower()
        # hidden names are uploads in progress by convention (rsync's .name.XXXXXX, .x.jpg.part)
        if p.name.startswith("."):
            ignored.append(src)
            continue
        if p.is_symlink():
            ident = b"symlink\0" + os.fsencode(src) + b"\0" + os.fsencode(os.readlink(p))
            link = InboxItem(source=src, path=p, sha256=hashlib.sha256(ident).hexdigest(), size=0, link=True)
            (known.append(link) if link.sha256 in skip else broken.append((link, SYMLINK_REASON)))
            continue
        if suffix not in IMAGE_SUFFIXES | TAR_SUFFIXES:
            ignored.append(src)
            continue
        st = p.stat()
        if now - st.st_mtime < min_age_s:
            too_new.append(src)
            continue
        if suffix in TAR_SUFFIXES:
            tar_item = InboxItem(source=src, path=p, sha256=sha256_file(p), size=st.st_size)
            if tar_item.sha256 in skip:
                known.append(tar_item)
                continue
            members: list[InboxItem] = []
            try:
                members = list(_tar_members(p, root))
            except (tarfile.TarError, OSError, EOFError) as err:
                broken.append((tar_item, f"unreadable tar: {type(err).__name__}: {err}"[:300]))
            candidates = members
        else:
            candidates = [InboxItem(source=src, path=p, sha256=sha256_file(p), size=st.st_size)]
            if candidates[0].sha256 in skip:
                known.append(candidates[0])
                continue
        for it in candidates:
            if it.sha256 in seen:
                dups += it.sha256 not in skip
                continue
            seen.add(it.sha256)
            items.append(it)
    return Scan(items=items, known=known, too_new=too_new, ignored=ignored, broken=broken, duplicates=dups)


