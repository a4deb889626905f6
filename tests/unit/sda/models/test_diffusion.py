import numpy as np
import pytest
import torch

from sda.io.images import to_uint8, to_unit_range
from sda.method.sampling import respaced_timesteps, sample_class_conditional
from sda.models.diffusion import DiffusionInfo, load_diffusion, save_diffusion
from sda.models.training import random_batches, train_epsilon


def test_respaced_timesteps_match_guided_diffusion():
    ts = respaced_timesteps(1000, 100)
    assert len(ts) == 100
    assert ts[:7] == [0, 10, 20, 30, 40, 50, 61]
    assert ts[-1] == 999
    assert ts[100 - 1 - 50] == 494 and ts[50] == 505  # DDA's N=50: noise at 505, denoise from 494


def test_sampling_depends_only_on_class_and_seed(tiny_unet, scheduler):
    a = sample_class_conditional(tiny_unet, scheduler, [0, 1, 2], [11, 12, 13], null_label=3, steps=5)
    b = sample_class_conditional(tiny_unet, scheduler, [1], [12], null_label=3, steps=5)
    c = sample_class_conditional(tiny_unet, scheduler, [1], [99], null_label=3, steps=5)
    assert a.shape == (3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a[1], b[0], atol=1e-5)
    assert (a[1] - c[0]).abs().mean() > 1e-2
    g = sample_class_conditional(tiny_unet, scheduler, [1], [12], null_label=3, steps=5, guidance_scale=3.0)
    assert (g[0] - b[0]).abs().mean() > 1e-4  # guidance changes the sample


@pytest.mark.slow
def test_training_reduces_loss_and_round_trips(tiny_unet, scheduler, tmp_path):
    rng = np.random.default_rng(0)
    images = np.zeros((40, 16, 16, 3), np.uint8)
    labels = rng.integers(0, 3, 40)
    for i, y in enumerate(labels):  # three flat colours: easy to learn
        images[i, :, :, y] = 255
    gen = torch.Generator().manual_seed(0)
    unet = tiny_unet
    losses = train_epsilon(unet, scheduler, random_batches(images, labels, 16, gen), steps=60, lr=3e-3, seed=0,
                           generator=gen, null_label=3, null_label_prob=0.2, warmup_steps=3, ema_decay=0.9)
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15])
    assert not unet.training  # ends in eval mode, with the EMA weights
    save_diffusion(tmp_path / "m", unet, scheduler, DiffusionInfo(num_classes=3, null_label=3))
    unet2, sched2, info = load_diffusion(tmp_path / "m")
    assert info.null_label == 3 and info.generated_classes == [0, 1, 2] and sched2.config.num_train_timesteps == 1000
    assert (tmp_path / "m" / "info.json").read_text() == '{\n  "num_classes": 3,\n  "null_label": 3\n}\n'  # set fields only
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 500])
    y = torch.tensor([0, 3])
    assert torch.allclose(unet(x, t, class_labels=y).sample, unet2(x, t, class_labels=y).sample, atol=1e-6)


def test_uint8_conversions_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    x = to_unit_range(img)
    assert x.shape == (2, 3, 5, 5) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), img)


def test_batches_that_run_out_are_an_error(tiny_unet, scheduler):
    batches = iter([(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(2, np.int64))])
    with pytest.raises(ValueError, match="ran out after 1 of 3 steps"):
        train_epsilon(tiny_unet, scheduler, batches, steps=3, lr=1e-3, seed=0)
