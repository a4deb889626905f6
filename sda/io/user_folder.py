"""A user's image folder (``folder.source_dir``, ``folder.target_dirs``) read as hostile input, through
the same walls as the relabel inbox (:mod:`sda.io.untrusted_files`): no link followed at any depth,
regular files only (a FIFO or a device is never opened for reading, so nothing blocks), bounded reads,
Pillow with an explicit list of decoders (:data:`sda.io.images.FOLDER_FORMATS`: the inbox's PNG, JPEG and
WebP, and BMP and TIFF).

:func:`list_folder` sorts every entry under the folder into what will be read and what will not, each
of the latter with its reason; nothing under the folder is dropped without a word. Class folder names
are compared as people read them: Unicode NFC (macOS writes NFD), so two folders that print alike are
one name, refused as two; names equal up to case are refused too, as are names with control characters
or bytes that are not UTF-8. :func:`read_files` then reads and decodes, yielding each file's image and
:class:`~sda.io.image_identity.Fingerprint` (same pixels, near copy), or the reason it cannot be used.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from PIL import Image

from sda.io.console import printable
from sda.io.image_identity import Fingerprint, fingerprint
from sda.io.images import FOLDER_FORMATS, FOLDER_SUFFIXES, BadImage, decode_image
from sda.io.untrusted_files import FILE_KINDS, HIDDEN_FOLDER, NotReadable, iter_tree, read_beneath

__all__ = ["SPLIT_NAMES", "Listing", "ReadFile", "class_name", "list_folder", "read_files", "skipped_reason"]

# class folder names that are really the splits of a data set one level down
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "dev", "eval"})



def _readable() -> str:
    return ", ".join(sorted(FOLDER_SUFFIXES))


def class_name(folder: str, key: str, root: Path) -> str:
    """A class folder's name (as ``os`` gives it) as a label: its bytes read as UTF-8, whatever the locale,
    in Unicode NFC. Raises ValueError (naming ``key``) for a name that is not UTF-8 or holds control
    characters (a newline, a tab): it would not print as one name."""
    shown = printable(folder)
    try:
        name = os.fsencode(folder).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{key}: class folder '{shown}' of {printable(str(root))} is not a UTF-8 name; rename it "
                         "(e.g. `convmv -f latin1 -t utf8 -r --notest <folder>`)") from None
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"{key}: class folder '{shown}' of {printable(str(root))} has a control character in its "
                         "name; rename it")
    return unicodedata.normalize("NFC", name)


@dataclass
class Listing:
    """What is under ``root``: ``classes`` (class name, NFC -> its image files, relative posix paths as on
    disk, nested folders included, sorted) when ``root`` holds class folders, else ``flat`` (the image
    files at its top); ``skipped``: ``{"file", "reason"}`` for every entry that will not be read (a link, a
    special file, a hidden file, an unsupported format, a file beside the class folders, a folder that
    cannot be listed). ``subfolders``: per class, the names of the folders directly inside it that hold
    files; ``own_images``: per class, the image files directly inside it (the layout checks)."""

    root: Path
    classes: dict[str, list[str]] = field(default_factory=dict)
    flat: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    subfolders: dict[str, set[str]] = field(default_factory=dict)
    own_images: dict[str, int] = field(default_factory=dict)

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append({"file": str(self.root / rel), "reason": reason})


def skipped_reason(rel: str, st: os.stat_result) -> str | None:
    """Why the entry ``rel`` (with its lstat ``st``) is not read as an image, or None: it may be."""
    name = PurePosixPath(rel).name
    if stat.S_ISLNK(st.st_mode):
        return "a symlink: not followed (copy the file in instead)"
    if not stat.S_ISREG(st.st_mode):
        return f"{FILE_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')}, not a regular file: not read"
    if name.startswith("."):
        return "a hidden file: not read"
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in FOLDER_SUFFIXES:
        return f"unsupported format ({suffix or 'no suffix'}): the readable ones are {_readable()}"
    return None


def require_folder(root: str | os.PathLike[str], key: str) -> Path:
    """``root`` as a Path; FileNotFoundError naming the parameter ``key`` when it is not a folder (a
    check that reads nothing, for the params checks before a stage imports its models)."""
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise FileNotFoundError(f"{key}: {root} {what}; point it at a folder of images (paths are relative to "
                                "the repository root)")
    return root


def list_folder(root: str | os.PathLike[str], key: str) -> Listing:
    """Every entry under the folder ``root`` (the parameter ``key`` names it in errors), sorted into a
    :class:`Listing`. ``root`` itself may be a link (the user named it); nothing under it is followed.
    Raises FileNotFoundError naming ``key`` when ``root`` is not a folder."""
    root = require_folder(root, key)
    listing = Listing(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as it:
            top = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        entries, unlisted = iter_tree(fd)
    finally:
        os.close(fd)
    classes = [name for name, is_dir in top if is_dir and not name.startswith(".")]
    names = _class_names(classes, key, root)
    listing.classes = {names[c]: [] for c in classes}
    listing.subfolders = {names[c]: set() for c in classes}
    listing.own_images = {names[c]: 0 for c in classes}
    for rel, reason in unlisted:  # hidden folders, at any depth, and folders that cannot be listed
        listing.skip(rel, reason if reason == HIDDEN_FOLDER else f"a folder that cannot be listed: {reason}")
    for rel, st in entries:
        parts = PurePosixPath(rel).parts
        reason = skipped_reason(rel, st)
        if reason is None and classes and len(parts) == 1:
            reason = "beside the class folders, in no class: move it into its class folder"
        if reason is None and not classes and len(parts) > 1:
            reason = "in a sub-folder of a flat folder: not read"
        if classes and len(parts) > 2:
            listing.subfolders[names[parts[0]]].add(unicodedata.normalize("NFC", parts[1]))
        if reason is not None:
            listing.skip(rel, reason)
        elif classes:
            listing.classes[names[parts[0]]].append(rel)
            listing.own_images[names[parts[0]]] += len(parts) == 2
        else:
            listing.flat.append(rel)
    return listing


def _class_names(folders: list[str], key: str, root: Path) -> dict[str, str]:
    """Folder name -> class name (:func:`class_name`); two folders whose names are one name in NFC, or
    equal up to case, are refused with both spellings."""
    names = {f: class_name(f, key, root) for f in folders}
    seen: dict[str, str] = {}
    for f in folders:
        other = seen.get(names[f].casefold())
        if other is not None:
            same = names[other] == names[f]
            how = ("the same name in two Unicode spellings (NFC and NFD: macOS writes NFD)" if same
                   else "names that differ only in case")
            raise ValueError(f"{key}: class folders '{printable(other)}' and '{printable(f)}' of {printable(str(root))} "
                             f"are {how}: {ascii(other)} and {ascii(f)}; merge them into one folder or rename one")
        seen[names[f].casefold()] = f
    return names


@dataclass(frozen=True)
class ReadFile:
    """One file of a :class:`Listing` read: the decoded ``image`` (8-bit ``L`` or ``RGB``), its
    ``fingerprint`` and original PIL ``mode``, or ``reason`` (and no image) when it cannot be used."""

    rel: str
    fingerprint: Fingerprint | None = None
    image: Image.Image | None = None
    reason: str | None = None
    mode: str | None = None


def read_files(root: Path, files: list[str], *, max_bytes: int, max_pixels: int, min_side: int = 1,
               identify: bool = True) -> Iterator[ReadFile]:
    """Read and decode ``files`` (relative to ``root``) in order, each at most ``max_bytes`` bytes, no
    link followed on its way (a file swapped for a link after the listing is refused), decoded by
    :func:`sda.io.images.decode_image`; with ``identify``, fingerprinted. One bad file never stops the rest."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for rel in files:
            try:
                data, _ = read_beneath(fd, rel, max_bytes)
            except NotReadable as err:
                yield ReadFile(rel, reason=str(err))
                continue
            except OSError as err:
                yield ReadFile(rel, reason=f"unreadable: {err.strerror or err}")
                continue
            try:
                image, mode = decode_image(data, max_pixels=max_pixels, min_side=min_side, formats=FOLDER_FORMATS)
            except BadImage as err:
                yield ReadFile(rel, reason=str(err))
                continue
            finally:
                del data  # a large file's bytes are not held beside its image
            yield ReadFile(rel, fingerprint(image) if identify else None, image, mode=mode)
    finally:
        os.close(fd)
