"""The model-adaptation baselines (BN, Tent, SAR, MEMO), DiffPure and the guard, on a tiny random CNN."""

import numpy as np
import pytest
import torch

from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.memo import Memo
from sda.method.baselines.sar import Sar, SarParams
from sda.method.baselines.tent import Tent, TentParams
from sda.method.diffpure import diffpure_depth, purify
from sda.method.guarded import Guard, GuardedSda, NormInputProfile, effective_classes, spread_gap
from sda.method.catalog import StreamInputs
from sda.models.classifiers import Classifier, create_classifier


def inputs(x, clf, projections=None):
    """A stream batch of uint8 images ``x`` with ``clf``'s frozen outputs (as the aligned model's too)."""
    p = x if projections is None else projections
    so, sf = clf.logits_and_features(x)
    ap, af = clf.logits_and_features(p)
    return StreamInputs(x, p, [f"k{i}" for i in range(len(x))],
                        {"source_orig": so, "source_orig_features": sf, "source_proj": ap, "aligned_proj": ap,
                         "aligned_proj_features": af})


@pytest.fixture
def clf():
    torch.manual_seed(0)
    model = create_classifier("sda_cnn3", 10, width=8).eval()
    with torch.no_grad():  # source statistics unlike any test batch's, so using the batch's shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return Classifier(model, {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3})


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _norm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "bn" in k or k.count(".") >= 2}


def test_bn_uses_the_batch_statistics(clf):
    x = _images(32)
    bn = BatchNormAdapter(clf, window=0)
    adapted = bn(inputs(x, clf))
    frozen = clf.logits(x)
    assert not torch.allclose(adapted, frozen, atol=1e-3)
    # the batch's statistics: an image's logits depend on its batch mates
    assert not torch.allclose(bn(inputs(x[:16], clf))[:1], adapted[:1], atol=1e-4)
    assert bn.batch_norm_layers == 6 and bn.cost.forwards == 48


def test_a_sliding_window_at_batch_one(clf):
    x = _images(12)
    bn = BatchNormAdapter(clf, window=8)
    out = torch.cat([bn(inputs(x[i: i + 1], clf)) for i in range(12)])
    full = BatchNormAdapter(clf, window=0)
    # the 12th image was seen with the 7 before it: the same as a batch of those 8
    assert torch.allclose(out[11], full(inputs(x[4:12], clf))[-1], atol=1e-5)
    # the first one alone has no batch statistics: the source model's prediction
    assert torch.allclose(out[0], clf.logits(x[:1])[0], atol=1e-5)
    assert torch.allclose(out[1], full(inputs(x[:2], clf))[-1], atol=1e-5)
    bn.reset()
    assert torch.allclose(bn(inputs(x[11:12], clf))[0], clf.logits(x[11:12])[0], atol=1e-5)  # reset empties the window


@pytest.mark.parametrize("method", ["bn", "tent", "sar", "eata", "roid", "rotta", "cotta"])
def test_a_lone_image_through_a_batchnorm_after_global_pooling(method):
    """A BatchNorm on (1, C) features cannot normalise one image: the source model's prediction, no step."""
    from sda.config import Streams
    from sda.method.catalog import MethodContext, build_method

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 10)).eval()
    clf = Classifier(model, {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3})
    x = _images(3)
    ctx = MethodContext(source=clf, aligned=clf, streams=Streams(), params=None, device=torch.device("cpu"), seed=0,
                        num_classes=10, window=8, source_split=lambda split: (_images(8), np.zeros(8, dtype=np.int64)))
    adapter = build_method(method, ctx)
    assert torch.allclose(adapter(inputs(x[:1], clf))[0], clf.logits(x[:1])[0], atol=1e-6)
    assert adapter(inputs(x[1:2], clf)).shape == (1, 10)  # two images in the window: batch statistics again


def test_tent_updates_only_the_norm_affine_parameters_with_nesterov_and_resets(clf):
    tent = Tent(clf, params=TentParams(lr=0.1), window=0)
    assert tent.optimizer.defaults["nesterov"] and tent.optimizer.defaults["momentum"] == 0.9  # the reference's SGD
    before = {k: v.clone() for k, v in tent.model.named_parameters()}
    x = inputs(_images(32), clf)
    first = tent(x)
    second = tent(x)
    assert not torch.allclose(first, second)  # it learnt from the first batch
    changed = {k for k, v in tent.model.named_parameters() if not torch.equal(v, before[k])}
    bn_names = {f"{n}.{p}" for n, m in tent.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                for p in ("weight", "bias")}
    assert changed and changed <= bn_names
    tent.reset()
    assert torch.allclose(tent(x), first)
    assert tent.cost.backwards == 96


def test_sar_updates_on_reliable_images_only_and_recovers(clf):
    x = inputs(_images(32), clf)
    none_reliable = Sar(clf, params=SarParams(lr=0.1, margin=1e-6), window=0)
    before = {k: v.clone() for k, v in none_reliable.model.state_dict().items()}
    none_reliable(x)
    assert all(torch.equal(v, before[k]) for k, v in none_reliable.model.state_dict().items())
    assert none_reliable.steps == 0
    sar = Sar(clf, params=SarParams(lr=0.1, margin=1.0, reset_below=100.0), window=0)
    first = sar(x)
    assert sar.resets == 1 and sar.steps == 1  # the moving average is under reset_below: back to the source weights
    assert torch.allclose(sar(x), first, atol=1e-6)


def test_sar_takes_its_step_where_a_few_images_are_reliable(clf):
    """The second (sharpness-aware) forward runs on the whole batch, as the authors' code does: with a
    handful of reliable images their second entropies stay under the margin and SAR steps (a forward on
    those images alone would see their own batch statistics and lose them)."""
    x = _images(32)
    logits = BatchNormAdapter(clf, window=0)(inputs(x, clf))
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    margin = float(ent.sort().values[4:6].mean()) / np.log(10)  # 5 of the 32 images are reliable
    sar = Sar(clf, params=SarParams(lr=0.1, margin=margin, reset_below=0.0), window=0)
    before = [p.clone() for p in sar.params]
    sar(inputs(x, clf))
    assert sar.steps == 1 and any(not torch.equal(a, b) for a, b in zip(before, sar.params))


def test_memo_depends_on_the_image_alone_and_restores_the_model(clf):
    memo = Memo(clf, lr=0.01, views=4, seed=0)
    x = _images(6)
    keys = [f"k{i}" for i in range(6)]
    together = memo(inputs(x, clf))
    alone = memo(x[3:4], keys[3:4])
    assert torch.allclose(together[3], alone[0], atol=1e-5)
    assert not torch.allclose(alone[0], clf.logits(x[3:4])[0], atol=1e-4)  # the step changed the prediction
    assert all(torch.equal(a, b) for a, b in zip(memo.model.state_dict().values(), clf.module.state_dict().values()))
    assert memo.cost.forwards == 7 * 5 and memo.cost.backwards == 4 * 7


def test_guard_keeps_frozen_sda_on_concentrated_or_short_streams():
    guard = Guard(num_classes=10, window=64, min_images=16, min_class_fraction=0.5, max_entropy_rise=0.0)
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
    guard = Guard(num_classes=10, window=64, min_images=16, min_class_fraction=0.5, max_entropy_rise=0.0,
                  max_spread_gap=(one + mixed) / 2)
    spread = np.arange(32) % 10
    assert guard.check(spread, (profile(noisy), profile(smooth)), profile.weights) is None
    guard.reset()
    assert guard.check(spread, (profile(mix), profile(smooth)), profile.weights) == "mixed"


def test_guarded_sda_does_not_feed_the_adapters_an_unsafe_batch(clf):
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

    combo = GuardedSda(Recording(), Recording(), Guard(num_classes=10, window=64, min_images=16,
                                                       min_class_fraction=0.5, max_entropy_rise=0.0))
    one_class = torch.zeros(32, 10)
    one_class[:, 2] = 5.0
    out = combo(StreamInputs(_images(32), _images(32), [""] * 32, {"source_orig": one_class, "aligned_proj": one_class}))
    assert torch.equal(out, 2 * one_class) and calls == []  # frozen SDA's sum; the adapters never saw it
    assert combo.decisions == {"concentrated": 32}


def test_diffpure_depth_and_per_image_noise(tiny_unet, scheduler):
    assert diffpure_depth(0.15, 1000, 20) == 3  # ts[3] = 158, the nearest to 150
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    keys = [f"k{i}" for i in range(6)]
    labels = torch.full((6,), 3)
    together = purify(tiny_unet, scheduler, x, keys, N=3, respacing=20, seed=1, class_labels=labels)
    alone = purify(tiny_unet, scheduler, x[2:3], keys[2:3], N=3, respacing=20, seed=1, class_labels=labels[:1])
    assert torch.allclose(together[2], alone[0], atol=1e-5)  # its batch mates do not matter
    other = purify(tiny_unet, scheduler, x[2:3], ["other"], N=3, respacing=20, seed=1, class_labels=labels[:1])
    assert not torch.allclose(other, alone, atol=1e-3)  # the noise is the image's own
    assert together.abs().max() <= 1
