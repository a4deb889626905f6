"""The test-time augmentations of CoTTA, RoTTA and ROID (sda.method.baselines.augment), on their own generator."""

import torch

from sda.method.baselines.augment import SeededAugment, tta_transform


def _pixels():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_the_augmentations_keep_the_shape_and_the_unit_range_and_change_the_image():
    x = _pixels()
    for transform in (tta_transform(16), tta_transform(16, soft=True), tta_transform(16, padding_mode="reflect",
                                                                                     cotta_augs=False)):
        out = SeededAugment(transform, seed=0)(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().mean() > 1e-3


def test_an_augmentation_depends_on_its_seed_alone_and_replays_after_a_reset():
    x = _pixels()
    augment = SeededAugment(tta_transform(16), seed=3)
    first = augment(x)
    torch.rand(100)  # the rest of the process drawing from the global generator changes nothing
    again = SeededAugment(tta_transform(16), seed=3)
    assert torch.equal(again(x), first)
    assert not torch.equal(augment(x), first)  # each call draws anew
    augment.reset()
    assert torch.equal(augment(x), first)
    assert not torch.equal(SeededAugment(tta_transform(16), seed=4)(x), first)


def test_an_augmentation_draws_nothing_from_the_global_generator():
    state = torch.get_rng_state()
    SeededAugment(tta_transform(16), seed=0)(_pixels())
    assert torch.equal(torch.get_rng_state(), state)
