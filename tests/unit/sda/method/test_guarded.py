"""SDA's combinations (sda.method.guarded): the label-free guard, the adapted sum it allows, and LAME on SDA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.lame import LameParams, lame_outputs
from sda.method.catalog import StreamInputs, build_method
from sda.method.guarded import (Guard, GuardedSda, NormInputProfile, SdaLameParams, effective_classes, sda_lame,
                                spread_gap)
from tests.support.methods import images as _images, inputs, method_context as _ctx


def _guard(**kw):
    return Guard(**{"num_classes": 10, "window": 64, "min_images": 16, "min_class_fraction": 0.5,
                    "max_entropy_rise": 0.0, **kw})


def test_guard_keeps_frozen_sda_on_concentrated_or_short_streams():
    guard = _guard()
    assert guard.check(np.arange(8) % 10) == "too_few"
    assert guard.check(np.arange(56) % 10) is None  # 64 images over 10 classes
    guard.reset()
    assert guard.check(np.full(64, 3)) == "concentrated"
    assert effective_classes(np.array([1, 1, 2, 2])) == pytest.approx(2)


def _two_domains(n, seed=0):
    """Smooth images (a low-variance domain) and the same images with strong noise (a high-variance one)."""
    rng = np.random.default_rng(seed)
    smooth = np.repeat(np.repeat(rng.integers(60, 200, (n, 4, 4, 3)), 4, 1), 4, 2)
    noisy = np.clip(smooth + rng.normal(0, 60, smooth.shape), 0, 255)
    return smooth.astype(np.uint8), noisy.astype(np.uint8)


def test_norm_input_profile_is_per_image_and_sees_a_domain_mix(clf):
    profile = NormInputProfile(clf)
    smooth, noisy = _two_domains(32)
    rows = profile(noisy)
    assert rows.shape == (32, len(profile.weights)) and profile.weights.sum() == pytest.approx(1)
    assert np.allclose(profile(noisy[5:6])[0], rows[5], atol=1e-4)  # its batch mates do not matter
    assert profile.cost.forwards == 33 and not clf.module.training
    # one domain: the originals spread no more than their "projections" (here: the smooth images);
    # half smooth, half noisy: far more
    one = spread_gap(profile(noisy), profile(smooth), profile.weights)
    mix = np.concatenate([smooth[:16], noisy[16:]])
    mixed = spread_gap(profile(mix), profile(smooth), profile.weights)
    assert mixed > one + 0.1, (one, mixed)
    guard = _guard(max_spread_gap=(one + mixed) / 2)
    spread = np.arange(32) % 10
    assert guard.check(spread, (profile(noisy), profile(smooth)), profile.weights) is None
    guard.reset()
    assert guard.check(spread, (profile(mix), profile(smooth)), profile.weights) == "mixed"


def test_guarded_sda_does_not_feed_the_adapters_an_unsafe_batch():
    calls = []

    class Recording:
        def __init__(self):
            from sda.method.baselines.base import ClassifierCost

            self.cost = ClassifierCost()

        def reset(self):
            calls.append("reset")

        def __call__(self, batch):
            calls.append(len(batch))
            return torch.zeros(len(batch), 10)

    combo = GuardedSda(Recording(), Recording(), _guard())
    one_class = torch.zeros(32, 10)
    one_class[:, 2] = 5.0
    out = combo(StreamInputs(_images(32), _images(32), [""] * 32, {"source_orig": one_class, "aligned_proj": one_class}))
    assert torch.equal(out, 2 * one_class) and calls == []  # frozen SDA's sum; the adapters never saw it
    assert combo.decisions == {"concentrated": 32}


def test_sda_lame_and_the_guard_that_chooses_it(clf):
    x = inputs(_images(64), clf, projections=_images(64, seed=1))
    sda_lame = build_method("sda+lame", _ctx(clf))
    out = sda_lame(x)
    sda = x.frozen["source_orig"] + x.frozen["aligned_proj"]
    features = torch.nn.functional.normalize(x.frozen["source_orig_features"], dim=1)  # the default graph's
    assert torch.allclose(out, lame_outputs(sda, features, LameParams(affinity="knn", knn=5)))
    # one class everywhere: concentrated, so the guard hands the batch to sda+lame instead of frozen SDA
    one_class = torch.zeros(64, 10)
    one_class[:, 2] = 5.0
    x = StreamInputs(x.originals, x.projections, x.keys,
                     {**x.frozen, "source_orig": one_class, "aligned_proj": one_class})
    combo = build_method("sda+bn+lame", _ctx(clf))
    out = combo(x)
    assert combo.decisions == {"concentrated": 64}
    assert torch.allclose(out, build_method("sda+lame", _ctx(clf))(x))
    assert not torch.allclose(out, 2 * one_class)  # not frozen SDA's sum


def test_where_the_guard_allows_it_the_output_is_the_sum_of_the_adapted_classifiers(clf):
    x = inputs(_images(32), clf, projections=_images(32, seed=1))
    sure = GuardedSda(BatchNormAdapter(clf, window=0), BatchNormAdapter(clf, window=0),
                      _guard(min_class_fraction=0.0, max_entropy_rise=1e9))
    expected = BatchNormAdapter(clf, window=0)(x) + BatchNormAdapter(clf, window=0)(inputs(x.projections, clf))
    assert torch.allclose(sure(x), expected, atol=1e-5) and sure.decisions == {"adapted": 32}
    assert sure.cost.forwards == 2 * 32 + 32 + 32  # the frozen logits it read, and each adapter's forward
    unsure = GuardedSda(BatchNormAdapter(clf, window=0), BatchNormAdapter(clf, window=0),
                        _guard(min_class_fraction=0.0, max_entropy_rise=-1e9))
    assert torch.equal(unsure(x), x.frozen["source_orig"] + x.frozen["aligned_proj"])
    assert unsure.decisions == {"less_sure": 32}


def test_the_guard_finds_the_adapted_logits_less_sure_by_their_mean_entropy_rise():
    sure, unsure = torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.zeros(2, 2)
    assert _guard(max_entropy_rise=0.1).less_sure(unsure, sure)
    assert not _guard(max_entropy_rise=0.1).less_sure(sure, unsure)
    assert not _guard(max_entropy_rise=1.0).less_sure(unsure, sure)  # ln 2 - ~0.04 nats: under the margin


def test_the_spread_gap_needs_two_images_and_a_profile():
    rows = np.array([[0.0, 1.0], [2.0, 1.0]])
    assert spread_gap(rows, np.zeros((2, 2)), np.array([0.5, 0.5])) == pytest.approx(0.5)  # std 1 and 0, halved
    assert spread_gap(rows[:1], np.zeros((1, 2)), np.array([0.5, 0.5])) == 0.0
    assert spread_gap(np.zeros((2, 0)), np.zeros((2, 0)), np.zeros(0)) == 0.0


def test_sda_lame_reads_the_chosen_features_and_after_a_fallback_the_projected_logits_alone():
    torch.manual_seed(0)
    frozen = {k: torch.randn(8, 10) for k in ("source_orig", "aligned_proj")}
    frozen |= {k: torch.randn(8, 6) for k in ("source_orig_features", "aligned_proj_features")}
    batch = StreamInputs(_images(8), _images(8), [""] * 8, frozen)
    aligned = F.normalize(frozen["aligned_proj_features"], dim=1)
    both = torch.cat([aligned, F.normalize(frozen["source_orig_features"], dim=1)], 1)
    knn = LameParams(affinity="knn", knn=3)
    assert torch.allclose(sda_lame(batch, SdaLameParams(knn=3, features="aligned"), fallback=True),
                          lame_outputs(frozen["aligned_proj"], aligned, knn))
    assert torch.allclose(sda_lame(batch, SdaLameParams(knn=3, features="both")),
                          lame_outputs(frozen["source_orig"] + frozen["aligned_proj"], both, knn))
