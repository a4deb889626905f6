"""sda.io.user_folder: a user's image folder sorted into what will be read and what will not (each with its
reason), class names as people read them, every error naming the parameter, and reads that go on past a
bad file."""

from __future__ import annotations

import io
import os
import unicodedata

import numpy as np
import pytest

from sda.io.user_folder import class_name, list_folder, read_files, require_folder, skipped_reason
from tests.support.images import random_png

KEY = "folder.source_dir"


def _files(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _reasons(listing) -> dict[str, str]:
    return {os.path.relpath(s["file"], listing.root): s["reason"] for s in listing.skipped}


def test_class_folders_list_their_images_nested_ones_included_sorted(tmp_path):
    _files(tmp_path, {"cat/b.png": random_png(), "cat/a.JPG": random_png(), "cat/sub/c.webp": random_png(),
                      "dog/x.tiff": random_png(), "dog/y.bmp": random_png()})
    listing = list_folder(tmp_path, KEY)
    assert listing.classes == {"cat": ["cat/a.JPG", "cat/b.png", "cat/sub/c.webp"], "dog": ["dog/x.tiff", "dog/y.bmp"]}
    assert listing.flat == [] and listing.skipped == []
    assert listing.subfolders == {"cat": {"sub"}, "dog": set()} and listing.own_images == {"cat": 2, "dog": 2}


def test_a_folder_of_loose_images_is_flat(tmp_path):
    _files(tmp_path, {"a.png": random_png(), "b.jpeg": random_png(), ".DS_Store": b"x"})
    listing = list_folder(tmp_path, KEY)
    assert listing.flat == ["a.png", "b.jpeg"] and listing.classes == {}
    assert _reasons(listing) == {".DS_Store": "a hidden file: not read"}


def test_every_entry_that_is_not_read_is_listed_with_its_reason(tmp_path):
    _files(tmp_path, {"cat/ok.png": random_png(), "cat/.hidden.png": random_png(), "cat/notes.txt": b"x",
                      "cat/README": b"x", "beside.png": random_png(), ".git/config": b"x"})
    (tmp_path / "cat" / "link.png").symlink_to(tmp_path / "cat" / "ok.png")
    os.mkfifo(tmp_path / "cat" / "pipe.png")
    listing = list_folder(tmp_path, KEY)
    assert listing.classes == {"cat": ["cat/ok.png"]}
    assert _reasons(listing) == {
        ".git": "a hidden folder: not read",
        "beside.png": "beside the class folders, in no class: move it into its class folder",
        "cat/.hidden.png": "a hidden file: not read",
        "cat/README": "unsupported format (no suffix): the readable ones are .bmp, .jpeg, .jpg, .png, .tif, .tiff, "
                      ".webp",
        "cat/link.png": "a symlink: not followed (copy the file in instead)",
        "cat/notes.txt": "unsupported format (.txt): the readable ones are .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp",
        "cat/pipe.png": "a FIFO (named pipe), not a regular file: not read",
    }


def test_one_sub_folder_makes_a_class_folder_set_and_a_loose_file_is_in_no_class(tmp_path):
    _files(tmp_path, {"a.png": random_png(), "sub/b.png": random_png()})
    listing = list_folder(tmp_path, KEY)
    assert listing.classes == {"sub": ["sub/b.png"]}
    assert _reasons(listing) == {"a.png": "beside the class folders, in no class: move it into its class folder"}


def test_a_hidden_folder_inside_a_class_is_reported_not_dropped_silently(tmp_path):
    _files(tmp_path, {"cat/ok.png": random_png(), "cat/.ipynb_checkpoints/ok.png": random_png()})
    listing = list_folder(tmp_path, KEY)
    assert listing.classes == {"cat": ["cat/ok.png"]}
    assert "cat/.ipynb_checkpoints" in _reasons(listing)


def test_the_root_itself_may_be_a_link_but_nothing_under_it_is_followed(tmp_path):
    _files(tmp_path / "real", {"cat/a.png": random_png()})
    _files(tmp_path / "elsewhere", {"b.png": random_png()})
    (tmp_path / "real" / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "named").symlink_to(tmp_path / "real", target_is_directory=True)
    listing = list_folder(tmp_path / "named", KEY)
    assert listing.classes == {"cat": ["cat/a.png"]}
    assert _reasons(listing) == {"dog": "a symlink: not followed (copy the file in instead)"}


@pytest.mark.parametrize("missing", [True, False])
def test_a_root_that_is_not_a_folder_names_the_parameter(tmp_path, missing):
    path = tmp_path / "x"
    if not missing:
        path.write_bytes(b"a file")
    what = "does not exist" if missing else "is not a folder"
    with pytest.raises(FileNotFoundError, match=f"^folder.target_dirs.b: {path} {what}; point it at a folder"):
        require_folder(path, "folder.target_dirs.b")
    with pytest.raises(FileNotFoundError, match="^folder.target_dirs.b: "):
        list_folder(path, "folder.target_dirs.b")
    assert require_folder(tmp_path, KEY) == tmp_path


def test_class_names_are_nfc_whatever_the_spelling_on_disk(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café" and class_name(nfd, KEY, tmp_path) == "café"
    _files(tmp_path, {f"{nfd}/a.png": random_png()})
    assert list(list_folder(tmp_path, KEY).classes) == ["café"]


def test_a_class_name_that_is_not_utf8_or_holds_a_control_character_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"^folder.source_dir: class folder 'caf\\xe9' .* not a UTF-8 name; rename"):
        class_name(os.fsdecode(b"caf\xe9"), KEY, tmp_path)
    with pytest.raises(ValueError, match=r"^folder.source_dir: class folder 'a\\tb' .* control character"):
        class_name("a\tb", KEY, tmp_path)


@pytest.mark.parametrize("other, how", [(unicodedata.normalize("NFD", "café"), "two Unicode spellings"),
                                        ("CAFÉ", "differ only in case")])
def test_two_class_folders_that_read_as_one_name_are_refused(tmp_path, other, how):
    _files(tmp_path, {"café/a.png": random_png(), f"{other}/b.png": random_png()})
    with pytest.raises(ValueError, match=f"^{KEY}: class folders .* are .*{how}.*merge them"):
        list_folder(tmp_path, KEY)


def test_skipped_reason_by_kind_name_and_suffix(tmp_path):
    (tmp_path / "a.PNG").write_bytes(b"x")
    assert skipped_reason("c/a.PNG", os.lstat(tmp_path / "a.PNG")) is None  # the suffix in any case
    assert skipped_reason("c/.a.png", os.lstat(tmp_path / "a.PNG")) == "a hidden file: not read"
    assert skipped_reason("c/a", os.lstat(tmp_path)) == "a folder, not a regular file: not read"


def test_reading_yields_every_file_in_order_each_bad_one_with_its_reason(tmp_path):
    _files(tmp_path, {"c/a.png": random_png(1, size=12), "c/big.png": random_png(2, size=64),
                      "c/bad.png": b"not an image", "c/tiny.png": random_png(3, size=2)})
    files = ["c/a.png", "c/big.png", "c/bad.png", "c/tiny.png", "c/gone.png"]
    max_bytes = len(random_png(2, size=64)) - 1
    got = list(read_files(tmp_path, files, max_bytes=max_bytes, max_pixels=10_000, min_side=4))
    assert [r.rel for r in got] == files
    ok = got[0]
    assert ok.reason is None and ok.image.size == (12, 12) and ok.mode == "RGB" and len(ok.fingerprint.pixels) == 64
    assert got[1].image is None and got[1].reason.startswith("file too large")
    assert got[2].reason.startswith("not an image") and got[3].reason.startswith("too small: 2x2")
    assert got[4].reason.startswith("cannot open")
    again = next(read_files(tmp_path, ["c/a.png"], max_bytes=10**6, max_pixels=10_000, identify=False))
    assert again.fingerprint is None and np.array_equal(np.asarray(again.image), np.asarray(ok.image))


def test_a_file_swapped_for_a_link_after_the_listing_is_not_read(tmp_path):
    _files(tmp_path, {"c/a.png": random_png(), "outside.png": random_png(5)})
    files = list_folder(tmp_path / "c", KEY).flat
    (tmp_path / "c" / "a.png").unlink()
    (tmp_path / "c" / "a.png").symlink_to(tmp_path / "outside.png")
    (got,) = read_files(tmp_path / "c", files, max_bytes=10**6, max_pixels=10_000)
    assert got.image is None and "symlink" in got.reason
