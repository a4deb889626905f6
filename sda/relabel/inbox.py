"""New target images as they arrive: find them in an inbox folder and hash them (decoding:
:func:`sda.io.images.decode_image`).

An inbox is a folder tree of image files (``.jpg .jpeg .png .webp``) and plain (uncompressed)
``.tar`` archives whose image members count as images. Every image is identified by the sha256 of its
bytes, so the same picture under two names, or a file seen again on the next run, is one item.

The inbox is untrusted (:mod:`sda.io.untrusted_files`): nothing is read through a link at any
depth, only regular files are read and never more than ``max_bytes`` of one, a tar member is read
at the offset the scan found it at, and a file is read again (to decode or to quarantine it) only if
it is still the file the scan read. Whatever goes wrong with one entry (a special file, an unreadable
file, a compressed or broken tar, a link or device member, a name outside the archive) makes that
entry a ``broken`` one with the reason; nothing stops the scan but an inbox root that cannot be read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Iterator

from sda.io.images import BadImage, IMAGE_SUFFIXES
from sda.io.untrusted_files import (FileId, NotReadable, iter_tree, open_beneath, read_beneath, read_fd,
                                    readlink_beneath)

__all__ = [
    "SYMLINK_REASON",
    "InboxItem",
    "Scan",
    "display_path",
    "open_inbox",
    "safe_file_name",
    "scan_inbox",
]

TAR_SUFFIXES: frozenset[str] = frozenset({".tar"})
# Nothing outside the inbox is read, so a symlink (to a file or a folder) is reported, not labelled.
SYMLINK_REASON = "symlink, not followed: copy the file into the inbox instead of linking it"
# what scan_inbox reads of one file or tar member at most, unless told
DEFAULT_MAX_BYTES = 50_000_000


class Readiness(str, Enum):
    """What becomes of an inbox file now (:func:`readiness`)."""

    READY = "ready"          # labelled (or quarantined, when it does not decode)
    HIDDEN = "hidden"        # ignored: a name starting with "." is an upload in progress by convention
    TOO_NEW = "too_new"      # left for a later scan: modified under relabel.min_age_seconds ago
    UPLOADING = "uploading"  # left for a later run: cut short, modified under relabel.upload_grace_seconds ago
    BAD = "bad"              # quarantined with its reason


def readiness(name: str, *, age_s: float, min_age_s: float, upload_grace_s: float, member: bool = False,
              decoded: BadImage | None = None) -> Readiness:
    """When an inbox file is labelled: the one rule. ``name``: its file name; ``age_s``: seconds since it was
    last modified; ``member``: a tar member (its tar is what was uploaded); ``decoded``: the
    :class:`BadImage` that reading and decoding its bytes raised (None: not read yet, as in the scan, or a
    usable image): before that, only the name and the age decide. A cut-short file (:attr:`BadImage.cut_short`)
    is waited for while it is younger than ``upload_grace_s``: an upload that stalled for longer than
    ``min_age_s`` may still be going on; after that it is bad like any other."""
    if name.startswith("."):
        return Readiness.HIDDEN
    if age_s < min_age_s:
        return Readiness.TOO_NEW
    if decoded is None:
        return Readiness.READY
    if decoded.cut_short and not member and age_s < upload_grace_s:
        return Readiness.UPLOADING
    return Readiness.BAD


@dataclass(frozen=True)
class InboxItem:
    """One candidate image: a file, or a member of a tar (``member`` set).

    ``source`` is the display path relative to the inbox (``a/b.tar::key.jpg`` for tar members),
    ``rel`` the file's path relative to ``root`` (the inbox); ``sha256``/``size`` describe the image
    bytes themselves; ``file_id`` the file (or tar) as the scan read it, and ``offset`` a member's
    data offset in its tar. A symlink (``link`` true) is never followed: its ``sha256`` hashes its
    path and target, its size is 0. ``readable`` false: the scan did not read it (special file,
    too large, unreadable), so it is neither copied nor removed; its ``sha256`` hashes its path and
    identity.
    """

    source: str
    root: Path
    rel: str
    sha256: str
    size: int
    member: str | None = None
    offset: int | None = None
    link: bool = False
    readable: bool = True
    file_id: FileId | None = field(default=None, compare=False)

    @property
    def path(self) -> Path:
        return self.root / self.rel

    def read(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """The item's bytes, read again from the file the scan read (same device, inode, size and
        mtime, no link followed); :class:`BadImage` when it changed or cannot be read."""
        if self.link or not self.readable:
            raise BadImage("not read: " + ("a symlink" if self.link else "refused at scan"))
        if self.size > max_bytes:
            raise BadImage(f"file too large: {self.size} bytes > relabel.max_file_bytes={max_bytes}")
        root_fd = open_inbox(self.root)
        try:
            fd, st = open_beneath(root_fd, self.rel)
        except NotReadable as err:
            raise BadImage(f"unreadable: {err}") from None
        finally:
            os.close(root_fd)
        try:
            if self.file_id is not None and FileId.of(st) != self.file_id:
                raise BadImage("changed since the scan (size, mtime or inode differ): left for the next run")
            if self.member is None:
                data = read_fd(fd, max_bytes)
            else:
                data = os.pread(fd, self.size, self.offset or 0)
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise BadImage("changed while being read (sha256 differs from the scan)")
        return data


@dataclass
class Scan:
    """What :func:`scan_inbox` found: candidate ``items`` (deduplicated by content), files whose
    hash was in ``skip`` (``known``: files and tars, not tar members), files left for later
    (too new), files that are not images (``ignored``), what is refused before decoding
    (``broken``: (item, reason): symlinks (:data:`SYMLINK_REASON`), special or unreadable files,
    compressed or broken tars, refused tar members) and folders that could not be listed
    (``unlisted``: (folder, reason))."""

    items: list[InboxItem]
    known: list[InboxItem]
    too_new: list[str]
    ignored: list[str]
    broken: list[tuple[InboxItem, str]]
    duplicates: int
    unlisted: list[tuple[str, str]] = field(default_factory=list)
    # rel -> [dev, inode, size, mtime_ns, [sha256 of the file, or of each image member of a tar]]
    index: dict[str, list] = field(default_factory=dict)

    @property
    def symlinks(self) -> list[str]:
        return [it.source for it, _ in self.broken if it.link]


def display_path(path: Path | str, root: Path | None = None) -> str:
    """``path`` (relative to ``root`` when given) as valid UTF-8 text: undecodable bytes of a file
    name become ``\\xNN`` escapes instead of failing a Parquet write later."""
    rel = os.fsencode(Path(path).relative_to(root) if root is not None else path)
    return rel.decode("utf-8", errors="backslashreplace")


def safe_file_name(source: str, sha256: str, max_len: int = 80) -> str:
    """A flat, harmless file name for a quarantined copy: ``<sha256[:16]>-<sanitised basename>``.
    Separators, ``..``, control characters and leading dots cannot survive."""
    base = source.replace("::", "/").rsplit("/", 1)[-1]
    clean = "".join(c if (c.isalnum() or c in "-_.") and c.isprintable() else "_" for c in base)
    clean = clean.replace("..", "_").lstrip(".") or "file"
    return f"{sha256[:16]}-{clean[-max_len:]}"


def open_inbox(inbox: str | os.PathLike[str]) -> int:
    """A descriptor of the inbox folder (the configured path itself may be a link); a missing or
    unreadable inbox raises ``FileNotFoundError`` / ``PermissionError`` naming it."""
    try:
        return os.open(inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"inbox {inbox} is not a folder: create it or set relabel.inbox") from None
    except PermissionError:
        raise PermissionError(f"inbox {inbox} cannot be read: give the service's user read access") from None


def _unread(root: Path, rel: str, st: os.stat_result, what: str) -> InboxItem:
    """An item for an entry that is not read: identified by its path and identity."""
    ident = f"{what}\0{rel}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return InboxItem(source=display_path(rel), root=root, rel=rel, sha256=hashlib.sha256(ident).hexdigest(), size=0,
                     readable=False, file_id=FileId.of(st))


def _member_name(m: tarfile.TarInfo) -> str:
    return m.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _tar_members(fd: int, root: Path, rel: str, tar_id: FileId, max_bytes: int
                 ) -> Iterator[tuple[InboxItem, str | None]]:
    """Each image member of the plain tar open at ``fd`` (header by header, data read at its offset:
    linear in the members), as ``(item, None)``, or ``(item, reason)`` for a member that is refused
    unread: too large, a link or device, a name outside the archive. Raises ``tarfile.TarError`` for
    a compressed or broken archive."""
    src = display_path(rel)
    os.lseek(fd, 0, os.SEEK_SET)  # a dup shares the offset: the caller may have read to the end
    with tarfile.open(fileobj=os.fdopen(os.dup(fd), "rb"), mode="r:") as tar:
        for m in tar:
            name = _member_name(m)
            if m.isdir() or (m.isfile() and PurePosixPath(m.name).suffix.lower() not in IMAGE_SUFFIXES):
                continue
            ident = hashlib.sha256(f"member\0{rel}\0{m.offset}\0{m.name}".encode("utf-8", "surrogateescape"))
            refused = dict(source=f"{src}::{name}", root=root, rel=rel, sha256=ident.hexdigest(), size=0,
                           member=name, offset=m.offset_data, readable=False, file_id=tar_id)
            parts = PurePosixPath(m.name).parts
            if not m.isfile():
                kind = "link" if (m.issym() or m.islnk()) else "device or FIFO"
                yield InboxItem(**refused), f"tar member is a {kind}: not extracted"
            elif m.name.startswith("/") or ".." in parts:
                yield InboxItem(**refused), "tar member name leaves the archive (absolute or ..): not extracted"
            elif m.size > max_bytes:
                yield InboxItem(**refused), f"file too large: {m.size} bytes > relabel.max_file_bytes={max_bytes}"
            else:
                data = os.pread(fd, m.size, m.offset_data)
                yield InboxItem(source=f"{src}::{name}", root=root, rel=rel, sha256=hashlib.sha256(data).hexdigest(),
                                size=len(data), member=name, offset=m.offset_data, file_id=tar_id), None


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def scan_inbox(inbox: str | os.PathLike[str], *, skip: set[str] | frozenset[str] = frozenset(),
               min_age_s: float = 0.0, now: float | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
               index: dict[str, list] | None = None) -> Scan:
    """Every image in ``inbox`` whose sha256 is not in ``skip``, in sorted path order.

    Hidden files and files that are neither images nor tars by their suffix are listed in ``ignored``
    (hidden folders are not entered); symlinks, special files, files over ``max_bytes``, unreadable
    files and tars, and refused tar members go to ``broken`` (to be quarantined: the user learns why
    they were not labelled). Files modified less than ``min_age_s`` seconds ago are reported in
    ``too_new`` and left for the next scan. A tar whose own sha256 is in ``skip`` (quarantined
    earlier) is not opened again. Only an inbox that cannot be opened raises.

    ``index``: the previous scan's :attr:`Scan.index`. A file (or tar) whose path, device, inode,
    size and mtime are unchanged there, and all of whose images are in ``skip``, is not read again:
    a file is listed in ``known``, a tar passed over. The new index is in the returned scan.
    """
    root = Path(inbox)
    root_fd = open_inbox(root)
    try:
        return _scan(root, root_fd, skip, min_age_s, time.time() if now is None else now, max_bytes, index or {})
    finally:
        os.close(root_fd)


def _scan(root: Path, root_fd: int, skip, min_age_s: float, now: float, max_bytes: int, index: dict) -> Scan:
    entries, unlisted = iter_tree(root_fd)
    sc = Scan(items=[], known=[], too_new=[], ignored=[], broken=[], duplicates=0, unlisted=unlisted)
    seen = set(skip)

    def offer(it: InboxItem) -> None:
        if it.sha256 in seen:
            sc.duplicates += it.sha256 not in skip
            return
        seen.add(it.sha256)
        sc.items.append(it)

    def refuse(it: InboxItem, reason: str) -> None:
        if it.sha256 in skip:
            sc.known.append(it)
        else:
            sc.broken.append((it, reason))

    for rel, st in entries:
        src = display_path(rel)
        name = rel.rsplit("/", 1)[-1]
        suffix = PurePosixPath(name).suffix.lower()
        ready = readiness(name, age_s=now - st.st_mtime, min_age_s=min_age_s, upload_grace_s=0.0)
        if ready is Readiness.HIDDEN:  # rsync's .name.XXXXXX, .x.jpg.part
            sc.ignored.append(src)
            continue
        try:
            if stat.S_ISLNK(st.st_mode):
                ident = b"symlink\0" + os.fsencode(rel) + b"\0" + os.fsencode(readlink_beneath(root_fd, rel))
                link = InboxItem(source=src, root=root, rel=rel, sha256=hashlib.sha256(ident).hexdigest(), size=0,
                                 link=True)
                refuse(link, SYMLINK_REASON)
                continue
            if suffix not in IMAGE_SUFFIXES | TAR_SUFFIXES:
                sc.ignored.append(src)
                continue
            if not stat.S_ISREG(st.st_mode):
                refuse(_unread(root, rel, st, "special"), "not a regular file (a FIFO, socket or device): not read")
                continue
            if ready is Readiness.TOO_NEW:
                sc.too_new.append(src)
                continue
            ident = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
            old = index.get(rel)
            if old and old[:4] == ident and old[4] and all(h in skip for h in old[4]):  # unchanged and done
                sc.index[rel] = old
                if suffix not in TAR_SUFFIXES:
                    sc.known.append(InboxItem(source=src, root=root, rel=rel, sha256=old[4][0], size=st.st_size,
                                              file_id=FileId.of(st)))
                continue
            if suffix in TAR_SUFFIXES:
                hashes = _scan_tar(root, root_fd, rel, st, sc, skip, max_bytes, offer, refuse)
                if hashes:
                    sc.index[rel] = [*ident, hashes]
                continue
            try:
                data, fid = read_beneath(root_fd, rel, max_bytes)
            except NotReadable as err:
                refuse(_unread(root, rel, st, "unread"), str(err))
                continue
            it = InboxItem(source=src, root=root, rel=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                           file_id=fid)
            sc.index[rel] = [fid.dev, fid.ino, fid.size, fid.mtime_ns, [it.sha256]]
            if it.sha256 in skip:
                sc.known.append(it)
            else:
                offer(it)
        except Exception as err:  # one entry never stops the scan: it is reported with the error
            refuse(_unread(root, rel, st, "error"), f"unreadable: {type(err).__name__}: {err}"[:300])
    return sc


def _scan_tar(root: Path, root_fd: int, rel: str, st: os.stat_result, sc: Scan, skip, max_bytes: int,
              offer, refuse) -> list[str]:
    """Scan one tar (its members offered or refused); returns the hashes of its image members, or []
    when it was refused or known whole."""
    try:
        fd, fst = open_beneath(root_fd, rel)
    except NotReadable as err:
        refuse(_unread(root, rel, st, "unread"), str(err))
        return []
    try:
        fid = FileId.of(fst)
        tar_item = InboxItem(source=display_path(rel), root=root, rel=rel, sha256=_sha256_fd(fd), size=fst.st_size,
                             file_id=fid)
        if tar_item.sha256 in skip:
            sc.known.append(tar_item)
            return []
        found = []
        try:
            found = list(_tar_members(fd, root, rel, fid, max_bytes))
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            # tar_item cannot be decoded or copied member-wise: the whole file is quarantined
            refuse(tar_item, f"not a plain tar (compressed or broken): {type(err).__name__}: {err}"[:300])
            return []
        for it, reason in found:
            refuse(it, reason) if reason else offer(it)
        return [it.sha256 for it, _ in found]
    finally:
        os.close(fd)
