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
    _refused(repo, "sda.domains.check", f"the same image is in class folders '{SHAPES[0]}' and '{SHAPES[1]}'")


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
