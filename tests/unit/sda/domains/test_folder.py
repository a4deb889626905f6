"""The folder domain: your own labelled images through the domain registry, and every way the folder
can be wrong (tests/e2e/test_folder_profile.py runs the whole pipeline on a generated folder set)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.support import SHAPES, copy_repo, make_digits_set, make_folder_set, sh
from sda.config import ParamsError, parse_params
from sda.domains import domain_for, domain_names, get_domain
from sda.domains.folder import write_source, write_targets
from sda.io.shards import load_shards, read_manifest

ROOT = Path(__file__).resolve().parents[4]


def _params(folder: dict, **sections) -> "object":
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "folder"
    raw["folder"].update(folder)
    raw["target_data"]["corruptions"] = ["gaussian_noise"]
    for k, v in sections.items():
        raw[k].update(v)
    return parse_params(raw)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("images")
    return root, make_folder_set(root, per_class=12, target_per_class=3, flat=5)


def test_the_registry_holds_the_three_domains_and_names_the_known_ones():
    assert domain_names() == ("embedded", "imagenet", "folder")
    assert get_domain("folder").pretrained_diffusion(_params({"source_dir": "images"})) is None
    assert get_domain("imagenet").pretrained_diffusion(_params({"source_dir": "images"})).section == "imagenet"
    with pytest.raises(ParamsError, match="profile: unknown profile 'cells'.*embedded.*imagenet.*folder"):
        domain_for(parse_params({"profile": "cells"}))
    with pytest.raises(ParamsError, match=r"profiles\.cells: unknown profile"):
        domain_for(parse_params({"profiles": {"cells": {"projection": {"N": 3}}}}))


def test_source_and_targets_from_folders(images, tmp_path):
    root, folder = images
    p = _params(folder)
    counts = write_source(p, tmp_path / "src")
    assert json.loads((tmp_path / "src" / "classes.json").read_text())["names"] == sorted(SHAPES)
    assert sum(counts.values()) == 4 * 12  # the truncated file is skipped ...
    skipped = json.loads((tmp_path / "src" / "skipped.json").read_text())
    assert [Path(s["file"]).name for s in skipped] == ["broken.jpg"] and "truncated" in skipped[0]["reason"]
    train = load_shards(tmp_path / "src" / "train")
    assert train.images.shape[1:] == (32, 32, 3) and set(train.labels) == {0, 1, 2, 3}
    grey = [i for i, m in enumerate(train.metas) if m["file"].endswith(".png")]
    assert grey and all(train.images[i].dtype == np.uint8 for i in grey)  # L and RGBA decoded to RGB
    assert any("/" in m["file"].split(SHAPES[0] + "/", 1)[-1] for m in train.metas)  # nested folders read

    domains = write_targets(p, tmp_path / "src", tmp_path / "tgt")
    assert domains == ["site_b", "site_c", "clean", "gaussian_noise"]
    index = json.loads((tmp_path / "tgt" / "domains.json").read_text())
    assert index["corruption_domains"] == ["site_b", "gaussian_noise"] and index["unlabelled"] == ["site_c"]
    site_b, site_c = load_shards(tmp_path / "tgt" / "site_b"), load_shards(tmp_path / "tgt" / "site_c")
    assert sorted(set(site_b.labels)) == [0, 1, 2, 3] and set(site_c.labels) == {-1}
    assert read_manifest(tmp_path / "tgt" / "clean")["count"] == read_manifest(tmp_path / "src" / "test")["count"]


def test_the_second_set_printed_digits_to_handwritten_scans(tmp_path):
    """The second measured set (docs/own-data.md), another kind of shift (acquisition: printed digits in 16 fonts as the
    source, 8 px scans of handwriting as the labelled target), read by the folder domain."""
    folder = make_digits_set(tmp_path / "images", per_class=10, target_per_class=2, flat=3)
    p = _params(folder)
    counts = write_source(p, tmp_path / "src")
    assert sum(counts.values()) == 100
    assert json.loads((tmp_path / "src" / "classes.json").read_text())["names"] == [str(d) for d in range(10)]
    domains = write_targets(p, tmp_path / "src", tmp_path / "tgt")
    assert domains == ["scans", "new_scans", "clean", "gaussian_noise"]
    scans = load_shards(tmp_path / "tgt" / "scans")
    assert sorted(scans.labels.tolist()) == sorted(list(range(10)) * 2) and scans.images.shape[1:] == (32, 32, 3)
    from sklearn.datasets import load_digits

    hand = load_digits().target  # each scan is the handwritten digit its file name indexes, in its class folder
    assert all(hand[int(Path(m["file"]).stem.split("_")[1])] == int(Path(m["file"]).parent.name) for m in scans.metas)


def test_a_file_over_the_size_limit_is_skipped_unread_with_the_reason(images, tmp_path):
    _, folder = images
    src = tmp_path / "src_dir"
    shutil.copytree(folder["source_dir"], src)
    big = src / SHAPES[0] / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8)).save(big)
    limit = big.stat().st_size - 1  # every other file is far smaller
    p = _params({**folder, "source_dir": str(src)}, relabel={"max_file_bytes": limit})
    counts = write_source(p, tmp_path / "src")
    assert sum(counts.values()) == 4 * 12  # the truncated file and the big one skipped
    skipped = {Path(s["file"]).name: s["reason"] for s in json.loads((tmp_path / "src" / "skipped.json").read_text())}
    assert skipped["big.png"] == f"file too large: {limit + 1} bytes > relabel.max_file_bytes={limit}"


def _bad(tmp_path: Path, images: tuple[Path, dict], case: str) -> tuple[dict, str]:
    root, good = images
    src = tmp_path / "src"
    if case == "missing":
        return {"source_dir": str(tmp_path / "nope")}, r"folder.source_dir: .*nope does not exist"
    if case == "no classes":
        src.mkdir()
        Image.new("RGB", (40, 40)).save(src / "a.png")
        return {"source_dir": str(src)}, r"folder.source_dir: .* has no class folders"
    if case == "one class":
        shutil.copytree(Path(good["source_dir"]) / SHAPES[0], src / SHAPES[0])
        return {"source_dir": str(src)}, r"has one class folder \(circle\); a classifier needs two"
    if case == "few images":
        shutil.copytree(good["source_dir"], src)
        for f in sorted((src / SHAPES[1]).rglob("*.*"))[3:]:
            f.unlink()
        return {"source_dir": str(src)}, r"fewer than folder.min_images_per_class=10 readable images: .*square \(3\)"
    if case == "unknown target class":
        tgt = tmp_path / "tgt"
        shutil.copytree(good["target_dirs"]["site_b"], tgt)
        (tgt / SHAPES[0]).rename(tgt / "hexagon")
        return ({**good, "target_dirs": {"site_b": str(tgt)}},
                r"folder.target_dirs.site_b: class folder\(s\) hexagon of .* are not source classes")
    if case == "missing target":
        return {**good, "target_dirs": {"site_x": str(tmp_path / "gone")}}, r"folder.target_dirs.site_x: .*gone"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "no classes", "one class", "few images", "unknown target class",
                                  "missing target"])
def test_every_way_the_folder_can_be_wrong_names_the_key_and_path(images, tmp_path, case):
    folder, message = _bad(tmp_path, images, case)
    p = _params(folder)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        write_source(p, tmp_path / "out_src")
        write_targets(p, tmp_path / "out_src", tmp_path / "out_tgt")
    assert not (tmp_path / "out_tgt").exists()  # nothing half-written


@pytest.mark.parametrize("size, message", [(8, "greater than or equal to 16"), (512, "less than or equal to 256"),
                                           (36, "multiple of 8")])
def test_image_size_out_of_range_is_a_params_error(size, message):
    with pytest.raises(ParamsError, match=rf"folder.image_size: .*{message}"):
        domain_for(_params({"source_dir": "x", "image_size": size}))


def test_the_folder_profile_needs_its_source_dir():
    params = parse_params({"profile": "folder"})  # the shape is fine; the domain says what it lacks
    with pytest.raises(ParamsError, match="profile folder: folder.source_dir is not set"):
        domain_for(params)


def test_a_bad_folder_exits_2_with_the_message(images, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo, {"profile": "folder", "folder": {"source_dir": "images/missing"}}, git=False)
    r = sh(repo, sys.executable, "-m", "tasks.source_data", check=False)
    assert r.returncode == 2 and "folder.source_dir: images/missing does not exist" in r.stderr, r.stderr
