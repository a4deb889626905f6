"""sda.domains.corruptions: ImageNet-C corruptions seeded per image (the same bytes in any batch and any
order, numpy's global state left as it was), and the shifted target domains written from one split."""

from __future__ import annotations

import numpy as np
import pytest

from sda.config import CORRUPTIONS
from sda.domains.corruptions import available_corruptions, corrupt_images, write_shifted_domains
from sda.domains.digits import render_digits
from sda.io.shards import ShardSet, load_shards, read_manifest
from sda.runtime import derive_seed


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Six embedded-domain digits (16 px), rendered once for the module."""
    return render_digits(16, 1, 0.35, seed=0)[0][:6]


# -- moved from tests/unit/sda/domains/test_embedded.py ------------------------------------------
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_runs_deterministically_at_16px(name, digits):
    x = digits
    a = corrupt_images(x, name, 5, seed=1)
    b = corrupt_images(x[:2], name, 5, seed=1)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a[:2], b)  # per-image seeding: independent of batch composition
    assert not np.array_equal(a, x)


def test_unknown_corruption():
    assert set(CORRUPTIONS) <= set(available_corruptions())
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_images(np.zeros((1, 8, 8, 3), np.uint8), "glitter", 5, 0)


# -- new -----------------------------------------------------------------------------------------
def _images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(40, 200, (n, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise"])
def test_the_seed_draws_the_noise_and_the_images_position_is_part_of_it(name):
    x = _images()
    a = corrupt_images(x, name, 3, seed=1)
    assert not np.array_equal(a, corrupt_images(x, name, 3, seed=2))
    same = np.repeat(x[:1], 2, axis=0)  # one image twice: two draws
    twice = corrupt_images(same, name, 3, seed=1)
    assert not np.array_equal(twice[0], twice[1])


def test_a_higher_severity_corrupts_more():
    x = _images()
    err = [np.abs(corrupt_images(x, "gaussian_noise", s, seed=0).astype(int) - x).mean() for s in (1, 3, 5)]
    assert err[0] < err[1] < err[2]


def test_numpys_global_random_state_and_the_noise_function_are_left_as_they_were():
    import corrupt_tta.corruptions as cc

    original = cc.random_noise
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    corrupt_images(_images(2), "impulse_noise", 5, seed=0)
    assert np.array_equal(np.random.rand(3), expected) and cc.random_noise is original


def test_the_shifted_domains_hold_the_splits_images_clean_or_corrupted_with_its_keys_and_labels(tmp_path):
    x = _images(5)
    split = ShardSet(keys=[f"k{i}" for i in range(5)], images=x, labels=np.array([0, 1, 2, 0, 1]), metas=[{}] * 5)
    write_shifted_domains(split, tmp_path, ["clean", "fog", "gaussian_noise"], severity=2, seed=7, maxcount=2,
                          meta={"split": "test"})
    for d in ("clean", "fog", "gaussian_noise"):
        got = load_shards(tmp_path / d)
        assert got.keys == split.keys and np.array_equal(got.labels, split.labels)
        assert all(m == {"domain": d} for m in got.metas)
        want = x if d == "clean" else corrupt_images(x, d, 2, derive_seed(7, "target_data", d))
        assert np.array_equal(got.images, want), d
        manifest = read_manifest(tmp_path / d)
        assert manifest["meta"] == {"domain": d, "split": "test"} and manifest["count"] == 5
        assert [s["name"] for s in manifest["shards"]] == [f"{d}-00000{i}.tar" for i in range(3)]
