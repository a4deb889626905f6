"""DiffPure (sda.method.diffpure): diffuse to t*, denoise without guidance, each image with its own noise."""

import pytest
import torch

from sda.method.diffpure import diffpure_depth, purify
from sda.method.sampling import respaced_timesteps


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


def test_the_depth_is_a_noising_index_of_the_respaced_schedule_and_t_star_is_checked():
    ts = respaced_timesteps(1000, 20)
    depths = [diffpure_depth(t, 1000, 20) for t in (1e-4, 0.3, 0.7, 0.9999)]
    assert depths == sorted(depths) and depths[0] == 1 and depths[-1] == 19  # never 0: at least one step
    assert abs(ts[depths[1]] - 300) <= 1000 / 19 / 2
    for t in (0.0, 1.0):
        with pytest.raises(ValueError, match="diffpure_t"):
            diffpure_depth(t, 1000, 20)
