"""A careless or unlucky user's folder through the real stage commands and ``sda check``: every layout
that would mislabel, leak or hang is refused with one line (exit 2, no traceback, nothing half-written
under data/), and every file not used is listed with its reason."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.support import SHAPES, copy_repo, make_folder_set, sh

TIMEOUT = 120  # a stage that blocks on a FIFO or reads /dev/zero would pass this


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_folder_set(root, per_class=12, target_per_class=3, flat=4)
    return root


def _repo(tmp_path: Path, folder: dict, **overrides) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo, {"profile": "folder", "folder": folder, "target_data": {"corruptions": ["fog"]}, **overrides},
              git=False)
    return repo


def _run(repo: Path, *module: str) -> tuple[int, str, str]:
    r = sh(repo, sys.executable, "-m", *module, check=False, timeout=TIMEOUT)
    return r.returncode, r.stdout, r.stderr


def _refused(repo: Path, module: str, message: str) -> str:
    """``module`` exits 2 with one error line holding ``message``, no traceback, no temporary left."""
    rc, _, err = _run(repo, module)
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert rc == 2 and len(lines) == 1 and message in lines[0], (rc, err[-2000:])
    assert "Traceback" not in err
    data = repo / "data"
    assert not (data.exists() and list(data.glob(".*tmp*"))), list(data.iterdir())
    return lines[0]


def _copy_source(shapes: Path, dst: Path) -> Path:
    shutil.copytree(shapes / "source", dst)
    return dst


def test_split_folders_taken_for_classes_are_refused(shapes, tmp_path):
    data = tmp_path / "dataset"
    _copy_source(shapes, data / "train")
    _copy_source(shapes, data / "val")
    repo = _repo(tmp_path, {"source_dir": str(data), "target_dirs": {}})
    for module in ("tasks.source_data", "sda.domains.check"):
        line = _refused(repo, module, "are split folders (train, val), not classes")
        assert f"did you mean source_dir: {data / 'train'}?" in line


def test_a_class_of_unreadable_files_is_counted_after_decoding(shapes, tmp_path):
    src = _copy_source(shapes, tmp_path / "src")
    bad = src / "hexagon"
    bad.mkdir()
    for i in range(12):
        (bad / f"h{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # a PNG signature, no image
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    _refused(repo, "tasks.source_data", f"fewer than folder.min_images_per_class=10 readable images: {bad} (0)")


def test_the_same_image_under_two_class_names_is_refused(shapes, tmp_path):
    src = _copy_source(shapes, tmp_path / "src")
    one = sorted((src / SHAPES[0]).rglob("*.png"))[0]
    shutil.copy(one, src / SHAPES[1] / "copy.png")
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    _refused(repo, "sda.domains.check", f"the same picture is in class folders '{SHAPES[0]}' and '{SHAPES[1]}'")


def test_hostile_entries_are_reported_not_followed_and_nothing_is_dropped_silently(shapes, tmp_path):
    src = _copy_source(shapes, tmp_path / "src")
    cls = src / SHAPES[2]
    os.mkfifo(cls / "fifo.png")
    (cls / "zero.png").symlink_to("/dev/zero")
    (cls / "loop").symlink_to(cls / "loop")
    (cls / "outside.png").symlink_to(next((shapes / "site_b" / SHAPES[2]).glob("*.*")))
    rng = np.random.default_rng(0)
    for suffix in ("bmp", "tif"):  # read: common dataset formats
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(cls / f"extra.{suffix}")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(cls / "anim.gif")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(src / "loose.png")
    (cls / "notes.txt").write_text("hello")
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    rc, out, err = _run(repo, "sda.domains.check")
    assert rc == 0, err
    for name in ("fifo.png: a FIFO (named pipe), not a regular file", "zero.png: a symlink: not followed",
                 "loop: a symlink: not followed", "outside.png: a symlink: not followed",
                 "anim.gif: unsupported format (.gif)", "notes.txt: unsupported format (.txt)",
                 "loose.png: beside the class folders, in no class", "broken.jpg: truncated or corrupt image"):
        assert name in out, (name, out)
    rc, _, err = _run(repo, "tasks.source_data")
    assert rc == 0, err
    skipped = {Path(s["file"]).name: s["reason"] for s in json.loads((repo / "data/source_data/skipped.json").read_text())}
    assert set(skipped) == {"fifo.png", "zero.png", "loop", "outside.png", "anim.gif", "notes.txt", "loose.png",
                            "broken.jpg"}
    files = {m["file"] for split in ("train", "val", "test")
             for m in (json.loads(line) for line in _metas(repo / "data/source_data" / split))}
    assert {f"{SHAPES[2]}/extra.bmp", f"{SHAPES[2]}/extra.tif"} <= files  # BMP and TIFF are read
    assert len(files) == 4 * 12 + 2  # every readable image used once


def _metas(shard_dir: Path):
    from sda.io.shards import iter_samples

    for s in iter_samples(shard_dir):
        yield json.dumps(s.meta)


@pytest.fixture(scope="module")
def source_done(shapes, tmp_path_factory) -> Path:
    """A repository whose source_data ran on the shapes source."""
    repo = _repo(tmp_path_factory.mktemp("src_done"), {"source_dir": str(shapes / "source"), "target_dirs": {}})
    rc, _, err = _run(repo, "tasks.source_data")
    assert rc == 0, err
    return repo


def _set_targets(repo: Path, targets: dict[str, str]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["folder"]["target_dirs"] = targets
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("case", ["is the source", "inside the source", "shares content"])
def test_a_labelled_target_that_would_measure_on_training_images_is_refused(shapes, source_done, tmp_path, case):
    src = shapes / "source"
    if case == "is the source":
        target = src
    elif case == "inside the source":
        target = src / SHAPES[0]
    else:
        target = tmp_path / "tgt"
        shutil.copytree(shapes / "site_b", target)
        shutil.copy(sorted((src / SHAPES[1]).rglob("*.png"))[0], target / SHAPES[1] / "from_source.png")
    _set_targets(source_done, {"site_x": str(target)})
    message = ("also in folder.source_dir (e.g. " if case == "shares content"
               else "is the source folder, inside it or holds it")
    for module in ("sda.domains.check", "tasks.target_data"):
        _refused(source_done, module, message)
    assert not (source_done / "data" / "target_data").exists()


def test_a_target_named_like_a_built_in_domain_and_an_unknown_profile(shapes, tmp_path):
    repo = _repo(tmp_path, {"source_dir": str(shapes / "source"),
                            "target_dirs": {"gaussian_noise": str(shapes / "site_b")}})
    _refused(repo, "tasks.target_data", "folder.target_dirs: gaussian_noise name(s) a domain the pipeline writes itself")
    text = (repo / "params.yaml").read_text().replace("profile: folder", "profile: foldr")
    (repo / "params.yaml").write_text(text)
    _refused(repo, "sda.domains.check", "profile: unknown profile 'foldr' (the profiles of params.yaml: embedded, imagenet, folder)")


def test_a_stage_before_its_upstream_and_a_second_run_at_once_say_what_to_do(shapes, tmp_path):
    repo = _repo(tmp_path, {"source_dir": str(shapes / "source"), "target_dirs": {"site_b": str(shapes / "site_b")}})
    _refused(repo, "tasks.target_data", "stage source_data has not run in this checkout; run `dvc repro target_data`")
    (repo / "data").mkdir(exist_ok=True)
    with open(repo / "data" / ".source_data.lock", "a+") as held:  # as a first run of the stage holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        _refused(repo, "tasks.source_data", "another run of stage source_data is running in this checkout")
    assert not (repo / "data" / "source_data").exists()


# --- the same picture by its pixels or as a near copy, layouts one level off, names that only look alike,
# bit depths, answers printable on any terminal (each case generated here; `sda check` and the stages)

def _first_png(folder: Path) -> Path:
    return sorted(folder.rglob("*.png"))[0]


@pytest.mark.parametrize("encoding", ["webp lossless", "bmp", "tiff", "png re-saved", "jpeg export"])
def test_a_labelled_target_holding_a_source_picture_in_another_encoding_is_refused(shapes, source_done, tmp_path,
                                                                                   encoding):
    target = tmp_path / "tgt"
    shutil.copytree(shapes / "site_b", target)
    original = _first_png(shapes / "source" / SHAPES[1])
    img = Image.open(original).convert("RGB")
    name = {"webp lossless": "c.webp", "bmp": "c.bmp", "tiff": "c.tif", "png re-saved": "c.png", "jpeg export": "c.jpg"}
    out = target / SHAPES[1] / name[encoding]
    img.save(out, **({"lossless": True} if encoding == "webp lossless" else {"quality": 85} if encoding == "jpeg export"
                     else {"compress_level": 1} if encoding == "png re-saved" else {}))
    _set_targets(source_done, {"site_x": str(target)})
    how = "near copy" if encoding == "jpeg export" else "same pixels"
    modules = ("sda.domains.check", "tasks.target_data") if encoding in ("webp lossless", "jpeg export") else \
        ("sda.domains.check",)
    for module in modules:
        line = _refused(source_done, module, "also in folder.source_dir (e.g. ")
        assert f"{SHAPES[1]}/{out.name} is {original}: {how}" in line, line  # both files named


def test_one_picture_in_two_classes_is_refused_and_a_copy_in_its_own_class_is_used_once(shapes, tmp_path):
    src = _copy_source(shapes, tmp_path / "src")
    original = _first_png(src / SHAPES[0])
    Image.open(original).convert("RGB").save(src / SHAPES[0] / "export.jpg", quality=90)  # within the class
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    rc, out, err = _run(repo, "sda.domains.check")
    assert rc == 0, err
    assert f"{SHAPES[0]}/export.jpg: the same picture as {original.relative_to(src)} (near copy" in out, out
    rc, _, err = _run(repo, "tasks.source_data")
    assert rc == 0, err
    skipped = {Path(s["file"]).name for s in json.loads((repo / "data/source_data/skipped.json").read_text())}
    assert "export.jpg" in skipped
    Image.open(original).convert("RGB").save(src / SHAPES[3] / "dup.bmp")  # across classes: a re-encoded copy
    _refused(repo, "sda.domains.check", f"the same picture is in class folders '{SHAPES[0]}' and '{SHAPES[3]}'")


def test_a_layout_one_level_off_names_the_folder_to_use(shapes, tmp_path):
    pacs = tmp_path / "pacs"
    for domain in ("photo", "sketch", "cartoon"):
        shutil.copytree(shapes / "source", pacs / domain)
    repo = _repo(tmp_path, {"source_dir": str(pacs), "target_dirs": {}})
    line = _refused(repo, "sda.domains.check", "a <domain>/<class>/ data set, its domains taken for classes")
    assert f"did you mean source_dir: {pacs / 'cartoon'} and target_dirs photo: {pacs / 'photo'}" in line
    office = tmp_path / "office" / "amazon"
    shutil.copytree(shapes / "source", office / "images")
    _set_folder(repo, source_dir=str(office))
    line = _refused(repo, "tasks.source_data", "has one class folder (images); a classifier needs two or more")
    assert f"did you mean source_dir: {office / 'images'}?" in line


def _set_folder(repo: Path, **values) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["folder"].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


@pytest.mark.parametrize("case", ["nfc and nfd", "case", "tab", "not utf-8"])
def test_class_names_that_only_look_alike_or_do_not_print_are_refused(shapes, tmp_path, case):
    src = _copy_source(shapes, tmp_path / "src")
    a, b = {"nfc and nfd": ("caf\u00e9", "cafe\u0301"), "case": ("Cat", "cat"), "tab": ("ci\trcle", None),
            "not utf-8": (os.fsdecode(b"caf\xe9"), None)}[case]
    os.rename(src / SHAPES[0], src / a)
    if b:
        os.rename(src / SHAPES[1], src / b)
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    message = {"nfc and nfd": r"are the same name in two Unicode spellings (NFC and NFD: macOS writes NFD): "
                              r"'caf\xe9' and 'cafe\u0301'",
               "case": "'Cat' and 'cat' of", "tab": r"class folder 'ci\trcle' of", "not utf-8": "is not a UTF-8 name"}[case]
    if case == "nfc and nfd":  # sorted by bytes: the NFD spelling (e + U+0301) comes first
        message = r"'cafe\u0301' and 'caf\xe9'"
    for module in ("sda.domains.check", "tasks.source_data"):
        _refused(repo, module, message)


def test_a_source_in_nfd_and_a_target_in_nfc_are_one_class(shapes, tmp_path):
    src, tgt = _copy_source(shapes, tmp_path / "src"), tmp_path / "tgt"
    shutil.copytree(shapes / "site_b", tgt)
    os.rename(src / SHAPES[0], src / "cafe\u0301")     # as macOS writes it
    os.rename(tgt / SHAPES[0], tgt / "caf\u00e9")      # as Linux and Windows do
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {"site_b": str(tgt)}})
    rc, out, err = _run(repo, "sda.domains.check")
    assert rc == 0 and "labelled (4 classes)" in out and "caf\u00e9" in out, (out, err)


def test_unclear_params_are_answered_with_the_fix(shapes, tmp_path):
    repo = _repo(tmp_path, {"source_dir": "~/my-images", "target_dirs": {}})
    rc, _, err = _run(repo, "sda.domains.check")
    assert rc == 2 and "'~' is not expanded here" in err and str(Path("~/my-images").expanduser()) in err, err
    _set_folder(repo, source_dir=str(shapes / "source"))
    text = (repo / "params.yaml").read_text().replace("target_dirs: {}", f"target_dirs:\n    no: {shapes / 'site_b'}")
    (repo / "params.yaml").write_text(text)
    rc, _, err = _run(repo, "sda.domains.check")
    assert rc == 2 and f"quote it: 'no': {shapes / 'site_b'}" in err and "Traceback" not in err, err


def test_nearly_black_16_bit_images_are_a_warning(shapes, tmp_path):
    src = _copy_source(shapes, tmp_path / "src")
    rng = np.random.default_rng(0)
    for i in range(3):  # 12-bit camera data saved in 16 bits without saying so
        Image.fromarray(rng.integers(0, 4096, (48, 48)).astype(np.uint16)).save(src / SHAPES[2] / f"raw{i}.png")
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    rc, out, err = _run(repo, "sda.domains.check")
    assert rc == 0 and "warning: 3 image(s) of 16 bits or more are nearly black" in out, (out, err)


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_check_prints_every_reason_on_any_terminal_encoding(shapes, tmp_path, locale):
    """Names of every kind in a folder: accents, a file name that is not UTF-8, a newline in a file name;
    the report and a refusal print whole under a UTF-8 and an ASCII (C) locale."""
    src = _copy_source(shapes, tmp_path / "src")
    os.rename(src / SHAPES[0], src / "caf\u00e9")
    cls = os.fsencode(src / "caf\u00e9")
    shutil.copy(_first_png(src / "caf\u00e9"), os.fsdecode(cls + b"/latin1-\xe9.gif"))
    (src / "caf\u00e9" / "two\nlines.txt").write_text("x")
    repo = _repo(tmp_path, {"source_dir": str(src), "target_dirs": {}})
    env = {"LC_ALL": locale, "LANG": locale, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}
    r = sh(repo, sys.executable, "-m", "sda.domains.check", check=False, timeout=TIMEOUT, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r"latin1-\xe9.gif: unsupported format (.gif)" in r.stdout, r.stdout
    assert r"two\nlines.txt: unsupported format (.txt)" in r.stdout, r.stdout
    assert ("caf\u00e9" if locale != "C" else r"caf\xe9") in r.stdout
    os.rename(src / SHAPES[1], src / "sq\tuare")
    r = sh(repo, sys.executable, "-m", "sda.domains.check", check=False, timeout=TIMEOUT, env=env)
    assert r.returncode == 2 and r"class folder 'sq\tuare' of" in r.stderr and "Traceback" not in r.stderr, r.stderr
