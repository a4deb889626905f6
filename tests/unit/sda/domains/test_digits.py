"""sda.domains.digits: scikit-learn's 1,797 digits rendered as RGB images with random colours of a minimum
luminance contrast, deterministic in the seed, and split stratified into disjoint train / val / test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sda.domains.digits import _LUMA, _colours, render_digits, split_digits


@pytest.fixture(scope="module")
def rendered():
    return render_digits(16, 1, 0.35, seed=0)


# -- moved from tests/unit/sda/domains/test_embedded.py ------------------------------------------
def test_render_is_deterministic_and_shaped():
    a, y = render_digits(16, 1, 0.35, seed=3)
    b, _ = render_digits(16, 1, 0.35, seed=3)
    c, _ = render_digits(16, 1, 0.35, seed=4)
    assert a.shape == (1797, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(set(y.tolist())) == list(range(10))


def test_split_is_stratified_and_disjoint(rendered):
    x, y = rendered
    s = split_digits(x, y, val_fraction=0.1, test_fraction=0.3, seed=0)
    assert {k: len(v.labels) for k, v in s.items()} == {"train": 1077, "val": 180, "test": 540}
    idx = [set(v.index.tolist()) for v in s.values()]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    counts = np.bincount(s["test"].labels, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 58  # ~54 per class


# -- new -----------------------------------------------------------------------------------------
def test_labels_are_scikit_learns_targets_in_order(rendered):
    _, y = rendered
    assert y.dtype == np.int64 and np.array_equal(y, load_digits().target)


@pytest.mark.parametrize("min_contrast", [0.0, 0.35, 0.55])
def test_foreground_and_background_differ_in_luminance_by_the_minimum_contrast(min_contrast):
    fg, bg = _colours(np.random.default_rng(0), 2000, min_contrast)
    assert fg.shape == bg.shape == (2000, 3) and fg.min() >= 0 and fg.max() <= 1 and bg.min() >= 0 and bg.max() <= 1
    gap = np.abs((fg - bg) @ _LUMA)
    assert gap.min() >= min_contrast
    if min_contrast:
        assert (np.abs((fg[:, None] - bg[None, :50]) @ _LUMA) < min_contrast).any()  # a real constraint


def test_every_digit_shows_its_two_colours(rendered):
    """Luminance spread of each image: the stroke and the background, at least min_contrast apart."""
    images, _ = rendered
    luma = images.astype(float) @ _LUMA / 255
    spread = luma.reshape(len(images), -1).max(1) - luma.reshape(len(images), -1).min(1)
    assert np.quantile(spread, 0.05) > 0.3 and spread.max() <= 1.0


def test_a_shift_moves_each_digit_by_at_most_max_shift_pixels(rendered):
    centred, _ = render_digits(16, 0, 0.35, seed=0)
    shifted, _ = rendered  # max_shift 1

    def centre_of_ink(imgs, axis):  # the background is the median luminance: the ink is what differs
        lum = imgs.astype(float) @ _LUMA
        ink = np.abs(lum - np.median(lum.reshape(len(imgs), -1), 1)[:, None, None])
        return (ink.sum(axis) * np.arange(16)).sum(1) / ink.sum((1, 2))

    for axis in (1, 2):
        moved = np.abs(centre_of_ink(shifted, axis) - centre_of_ink(centred, axis))
        assert moved.max() < 1.5 and moved.mean() > 0.2
    assert render_digits(8, 0, 0.35, seed=0)[0].shape == (1797, 8, 8, 3)


def test_each_split_holds_the_images_at_its_sorted_indices_and_another_seed_splits_otherwise(rendered):
    x, y = rendered
    s = split_digits(x, y, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert sum(len(v.index) for v in s.values()) == len(y)
    for split in s.values():
        assert (np.diff(split.index) > 0).all()
        assert np.array_equal(split.images, x[split.index]) and np.array_equal(split.labels, y[split.index])
    again = split_digits(x, y, val_fraction=0.2, test_fraction=0.2, seed=1)
    other = split_digits(x, y, val_fraction=0.2, test_fraction=0.2, seed=2)
    assert np.array_equal(again["test"].index, s["test"].index)
    assert not np.array_equal(other["test"].index, s["test"].index)
    assert len(s["val"].index) == pytest.approx(0.2 * len(y), abs=1)
