import numpy as np
import pytest

from sda.config import CORRUPTIONS
from sda.domains.corruptions import available_corruptions, corrupt_images
from sda.domains.digits import render_digits, split_digits


def test_render_is_deterministic_and_shaped():
    a, y = render_digits(16, 1, 0.35, seed=3)
    b, _ = render_digits(16, 1, 0.35, seed=3)
    c, _ = render_digits(16, 1, 0.35, seed=4)
    assert a.shape == (1797, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(set(y.tolist())) == list(range(10))


def test_split_is_stratified_and_disjoint():
    x, y = render_digits(16, 1, 0.35, seed=0)
    s = split_digits(x, y, val_fraction=0.1, test_fraction=0.3, seed=0)
    assert {k: len(v.labels) for k, v in s.items()} == {"train": 1077, "val": 180, "test": 540}
    idx = [set(v.index.tolist()) for v in s.values()]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    counts = np.bincount(s["test"].labels, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 58  # ~54 per class


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_runs_deterministically_at_16px(name):
    x, _ = render_digits(16, 1, 0.35, seed=0)
    x = x[:6]
    a = corrupt_images(x, name, 5, seed=1)
    b = corrupt_images(x[:2], name, 5, seed=1)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a[:2], b)  # per-image seeding: independent of batch composition
    assert not np.array_equal(a, x)


def test_unknown_corruption():
    assert set(CORRUPTIONS) <= set(available_corruptions())
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_images(np.zeros((1, 8, 8, 3), np.uint8), "glitter", 5, 0)
