"""sda.domains.imagenet on tiny local folders in the real layouts (class folders of JPEGs, a flat folder with
a label file, ImageNet-C's <corruption>/<severity>/<class>/): the class list, the subset, the matching
ImageNet-C files, ImageNet-W's watermark, and the source and target sets written from them."""

from __future__ import annotations

import json
from pathlib import Path

import imagenet_w  # noqa: F401 - imports torchvision (seconds): counted as an import, not as the first test
import numpy as np
import pytest
from PIL import Image

from sda.config import parse_params
from sda.domains.imagenet import (IMAGENET_C_URL, ImageRef, class_names, imagenet_c_refs, imagenet_w_image,
                                  iter_domain, list_images, select_classes, write_source, write_targets)
from sda.io.images import read_image
from sda.io.shards import load_shards, read_manifest
from sda.io.target_index import TargetIndex
from tests.support.datasets import WNIDS


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (44, 38)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` (3 a class, listed out of order on disk), a stray text file,
    a hidden folder, and ImageNet-C ``gaussian_noise/3``, ``gaussian_noise/5`` and ``fog/5`` with the same files."""
    root = tmp_path_factory.mktemp("imagenet")
    for c, wnid in enumerate(WNIDS):
        for i in (2, 0, 1):
            name = f"ILSVRC2012_val_{3 * c + i + 1:08d}.JPEG"
            _jpeg(root / "val" / wnid / name, 10 * c + i)
            for corruption in ("gaussian_noise/3", "gaussian_noise/5", "fog/5"):
                _jpeg(root / "imagenet-c" / corruption / wnid / name, 100 + 10 * c + i)
        (root / "val" / wnid / "LOC_synset.txt").write_text("not an image")
    (root / "val" / ".cache").mkdir()
    (root / "val" / "README").write_text("a file, not a class")
    return root


def _params(tree: Path, **imagenet):
    section = {"val_dir": str(tree / "val"), "imagenet_c_dir": str(tree / "imagenet-c"), "severities": [5],
               "imagenet_w": False, "image_size": 16, "resize_size": 20, "crop_size": 16, **imagenet}
    return parse_params({"profile": "imagenet", "imagenet": section,
                         "target_data": {"corruptions": ["gaussian_noise"], "shard_maxcount": 4}})


def test_the_classes_are_the_sorted_class_folders(tree):
    assert class_names(tree / "val") == WNIDS


def test_a_missing_or_empty_val_folder_says_which_setting_to_fix(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageNet folder .*missing not found; set imagenet.val_dir"):
        class_names(tmp_path / "missing")
    (tmp_path / "x.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match="has no class folders; for a flat folder set imagenet.val_labels"):
        class_names(tmp_path)


def test_a_label_file_gives_classes_0_to_its_largest_index_and_refuses_a_bad_line(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a.JPEG 0\n\nb.JPEG 4\n")
    assert class_names(tmp_path, labels) == ["0", "1", "2", "3", "4"]
    labels.write_text("a.JPEG 0\nb.JPEG four\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: expected '<file name> <class index>', got 'b.JPEG four'"):
        class_names(tmp_path, labels)
    with pytest.raises(FileNotFoundError, match=r"label file .*nope.txt not found \(imagenet.val_labels\)"):
        class_names(tmp_path, tmp_path / "nope.txt")


def test_a_subset_is_chosen_by_class_name_or_index_sorted_without_repeats():
    assert select_classes(WNIDS, None) == [0, 1, 2]
    assert select_classes(WNIDS, ["n01484850", "0", "n01440764"]) == [0, 2]
    for bad in ("n99999999", "3"):
        with pytest.raises(ValueError, match=f"imagenet.classes: '{bad}' is neither a class folder nor an index < 3"):
            select_classes(WNIDS, [bad])


def test_the_images_are_listed_class_by_class_files_sorted_first_n_of_each(tree):
    refs = list_images(tree / "val", WNIDS, classes=["2", "n01440764"], per_class=2)
    assert [(r.key, r.label) for r in refs] == [("ILSVRC2012_val_00000001", 0), ("ILSVRC2012_val_00000002", 0),
                                                ("ILSVRC2012_val_00000007", 2), ("ILSVRC2012_val_00000008", 2)]
    assert refs[0].path == tree / "val" / WNIDS[0] / "ILSVRC2012_val_00000001.JPEG"
    assert len(list_images(tree / "val", WNIDS)) == 9  # the text files are not images


def test_a_flat_folder_is_listed_by_its_label_file(tmp_path):
    for i, name in enumerate(["c.JPEG", "a.JPEG", "b.JPEG"]):
        _jpeg(tmp_path / "val" / name, i)
    (tmp_path / "labels.txt").write_text("c.JPEG 1\na.JPEG 1\nb.JPEG 0\n")
    refs = list_images(tmp_path / "val", ["0", "1"], label_file=tmp_path / "labels.txt", per_class=5)
    assert refs == [ImageRef("b", tmp_path / "val" / "b.JPEG", 0), ImageRef("a", tmp_path / "val" / "a.JPEG", 1),
                    ImageRef("c", tmp_path / "val" / "c.JPEG", 1)]


def test_a_subset_that_selects_nothing_or_repeats_a_key_or_lacks_a_class_folder_is_refused(tmp_path):
    _jpeg(tmp_path / "a" / "same.JPEG", 0)
    _jpeg(tmp_path / "b" / "same.png", 1)
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="file names are not unique across classes"):
        list_images(tmp_path, ["a", "b"])
    with pytest.raises(ValueError, match="no images found under .* for the chosen classes"):
        list_images(tmp_path, ["a", "b", "c"], classes=["c"])
    with pytest.raises(FileNotFoundError, match="class folder .*/d not found; every class of imagenet.classes"):
        list_images(tmp_path, ["a", "d"], classes=["d"])


def test_imagenet_c_files_are_the_same_images_in_the_corruptions_folder(tree):
    val = list_images(tree / "val", WNIDS, per_class=1)
    refs = imagenet_c_refs(tree / "imagenet-c", "fog", 5, val, WNIDS)
    assert [(r.key, r.label) for r in refs] == [(r.key, r.label) for r in val]
    assert refs[1].path == tree / "imagenet-c" / "fog" / "5" / WNIDS[1] / f"{val[1].key}.JPEG"


def test_a_missing_imagenet_c_folder_or_file_says_where_to_get_it(tree, tmp_path):
    val = list_images(tree / "val", WNIDS, per_class=1)
    with pytest.raises(FileNotFoundError, match="ImageNet-C folder .*snow/5 not found; expected "
                       "<imagenet_c_dir>/snow/5/<class>/<file>") as err:
        imagenet_c_refs(tree / "imagenet-c", "snow", 5, val, WNIDS)
    assert IMAGENET_C_URL in str(err.value) and "imagenet.imagenet_c_dir: null" in str(err.value)
    missing = [ImageRef("ILSVRC2012_val_99999999", tree / "x", 0)]
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_val_99999999.JPEG not found: ImageNet-C fog/5 lacks"):
        imagenet_c_refs(tree / "imagenet-c", "fog", 5, missing, WNIDS)


def test_imagenet_w_is_the_watermarked_evaluation_crop_at_the_model_size(tmp_path):
    _jpeg(tmp_path / "a.JPEG", 0, size=(60, 48))
    Image.new("RGB", (60, 48), (40, 40, 40)).save(tmp_path / "dark.png")
    marked = imagenet_w_image(tmp_path / "a.JPEG", 32, eval_resize=36, eval_crop=32)
    assert marked.shape == (32, 32, 3) and marked.dtype == np.uint8
    assert np.array_equal(marked, imagenet_w_image(tmp_path / "a.JPEG", 32, eval_resize=36, eval_crop=32))
    dark = imagenet_w_image(tmp_path / "dark.png", 32, eval_resize=36, eval_crop=32).astype(int)
    assert dark.min() >= 39 and dark.max() > 60  # white text at half opacity on a flat image: only brighter
    assert 0.02 < (dark > 45).mean() < 0.6


def test_each_domain_yields_key_image_and_label_the_watermarked_one_differs(tree):
    refs = list_images(tree / "val", WNIDS, per_class=1)
    plain = list(iter_domain(refs, 16, "clean", eval_resize=20, eval_crop=16))
    marked = list(iter_domain(refs, 16, "imagenet_w", eval_resize=20, eval_crop=16))
    assert [(k, y) for k, _, y in plain] == [(r.key, r.label) for r in refs] == [(k, y) for k, _, y in marked]
    assert np.array_equal(plain[0][1], read_image(refs[0].path, 16))
    assert not np.array_equal(plain[0][1], marked[0][1])


def test_the_source_is_the_class_list_and_the_selected_indices(tree, tmp_path):
    counts = write_source(_params(tree, classes=["n01484850", "n01440764"]), tmp_path / "source")
    assert counts == {}
    assert json.loads((tmp_path / "source" / "classes.json").read_text()) == {"names": WNIDS, "selected": [0, 2]}


def test_fine_tuning_writes_the_selected_train_images_and_needs_a_train_folder(tree, tmp_path):
    counts = write_source(_params(tree, finetune_steps=5, train_dir=str(tree / "val"), images_per_class=2,
                                  classes=["1"]), tmp_path / "source")
    train = load_shards(tmp_path / "source" / "train")
    assert counts == {"train": 2} and train.images.shape == (2, 16, 16, 3) and train.labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match="imagenet.finetune_steps > 0 needs imagenet.train_dir"):
        write_source(_params(tree, finetune_steps=5), tmp_path / "other")
    assert not (tmp_path / "other").exists()  # nothing half-written


def test_the_targets_are_clean_each_corruption_and_imagenet_w_of_the_same_images(tree, tmp_path):
    params = _params(tree, imagenet_w=True, images_per_class=2)
    assert write_targets(params, tmp_path / "source", tmp_path / "t") == ["clean", "gaussian_noise", "imagenet_w"]
    sets = {d: load_shards(tmp_path / "t" / d) for d in ("clean", "gaussian_noise", "imagenet_w")}
    assert all(s.keys == sets["clean"].keys and s.labels.tolist() == [0, 0, 1, 1, 2, 2] for s in sets.values())
    assert not np.array_equal(sets["clean"].images, sets["gaussian_noise"].images)
    assert read_manifest(tmp_path / "t" / "gaussian_noise")["meta"] == {"domain": "gaussian_noise", "image_size": 16}
    assert len(read_manifest(tmp_path / "t" / "clean")["shards"]) == 2  # target_data.shard_maxcount: 4
    index = TargetIndex.read(tmp_path / "t")
    assert index.domains == ("clean", "gaussian_noise", "imagenet_w") and index.in_mean == ("gaussian_noise",)
    assert index.severities == (5,) and index.split == "imagenet-val"


def test_several_severities_name_each_domain_by_its_severity(tree, tmp_path):
    params = _params(tree, severities=[3, 5], classes=["0"], images_per_class=2)
    assert write_targets(params, tmp_path / "s", tmp_path / "t") == ["clean", "gaussian_noise_s3", "gaussian_noise_s5"]


def test_targets_without_a_corruption_domain_or_with_a_missing_file_write_nothing(tree, tmp_path):
    with pytest.raises(ValueError, match="no corruption domain: set imagenet.imagenet_c_dir"):
        write_targets(_params(tree, imagenet_c_dir=None), tmp_path / "s", tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="ImageNet-C folder"):
        write_targets(_params(tree, severities=[1]), tmp_path / "s", tmp_path / "t")
    assert not (tmp_path / "t").exists()
