import numpy as np
import pytest
import torch

from sda.models.diffusion import DiffusionInfo, load_diffusion, save_diffusion
from sda.models.training import random_batches, train_epsilon


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
