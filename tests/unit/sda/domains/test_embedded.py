"""The built-in domain: the digits split and sharded with their class list, the same bytes for a seed, and
their target domains in the order the params name them."""

from __future__ import annotations

import numpy as np

from sda.config import parse_params
from sda.domains import domain_for
from sda.io.shards import load_shards
from sda.io.target_index import TargetIndex
from sda.layout import SourceClasses


def _params(**embedded):
    return parse_params({"embedded": {"image_size": 8, **embedded},
                         "target_data": {"corruptions": ["gaussian_noise"], "shard_maxcount": 1000}})


def test_the_source_is_split_sharded_and_named_and_a_seed_gives_the_same_images(tmp_path):
    params = _params(test_fraction=0.3, val_fraction=0.1)
    domain = domain_for(params)
    counts = domain.write_source(params, tmp_path / "a")
    assert set(counts) == {"train", "val", "test"} and sum(counts.values()) == 1797  # scikit-learn's digits
    assert abs(counts["test"] / 1797 - 0.3) < 0.01 and abs(counts["val"] / 1797 - 0.1) < 0.01
    assert SourceClasses.in_folder(tmp_path / "a").names == [str(d) for d in range(10)]
    test = load_shards(tmp_path / "a" / "test")
    assert test.images.shape == (counts["test"], 8, 8, 3) and test.images.dtype == np.uint8
    assert set(np.unique(test.labels)) == set(range(10))
    domain.write_source(params, tmp_path / "b")
    assert np.array_equal(load_shards(tmp_path / "b" / "test").images, test.images)
    other = parse_params({**params.model_dump(), "embedded": {"image_size": 8}, "runtime": {"seed": 1}})
    domain.write_source(other, tmp_path / "c")
    assert not np.array_equal(load_shards(tmp_path / "c" / "test").images[:50], test.images[:50])


def test_the_targets_are_clean_then_each_corruption_of_the_params_split(tmp_path):
    params = _params()
    domain = domain_for(params)
    domain.write_source(params, tmp_path / "source")
    assert domain.write_targets(params, tmp_path / "source", tmp_path / "targets") == ["clean", "gaussian_noise"]
    index = TargetIndex.read(tmp_path / "targets")
    assert index.domains == ("clean", "gaussian_noise") and index.in_mean == ("gaussian_noise",)
    clean = load_shards(tmp_path / "targets" / "clean")
    noisy = load_shards(tmp_path / "targets" / "gaussian_noise")
    test = load_shards(tmp_path / "source" / "test")
    assert np.array_equal(clean.images, test.images) and np.array_equal(noisy.labels, test.labels)
    assert not np.array_equal(noisy.images, test.images)
    assert domain.image_size(params) == 8 and domain.severities(params) == [params.target_data.severity]
