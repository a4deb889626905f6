"""Sampling the class-conditional diffusion models (sda.method.sampling): the respaced schedule, one generator
per sample, classifier-free guidance, and DiT's latents decoded."""

import pytest
import torch

from sda.method.sampling import respaced_timesteps, sample_class_conditional, sample_dit


@pytest.fixture(scope="module")
def tiny_dit():
    """A DiT of 4 px latents and its VAE (32 px images), random weights."""
    from tests.support.tiny_models import tiny_dit

    return tiny_dit()


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


def test_the_respaced_schedule_keeps_both_ends_and_refuses_too_few_or_too_many_steps():
    assert respaced_timesteps(1000, 2) == [0, 999]
    assert respaced_timesteps(50, 50) == list(range(50))
    for steps in (1, 51):
        with pytest.raises(ValueError, match="steps must be in"):
            respaced_timesteps(50, steps)


def test_sampling_checks_its_plan_and_leaves_the_callers_scheduler_as_it_was(tiny_unet, scheduler):
    with pytest.raises(ValueError, match="same length"):
        sample_class_conditional(tiny_unet, scheduler, [0, 1], [1], null_label=3, steps=2)
    before = scheduler.timesteps.clone()
    sample_class_conditional(tiny_unet, scheduler, [0], [1], null_label=3, steps=2)
    assert torch.equal(scheduler.timesteps, before)


def test_dit_samples_are_decoded_images_of_a_class_and_seed_alone(tiny_dit):
    dit, vae = tiny_dit
    pair = sample_dit(dit, vae, [0, 5], [1, 2], steps=3)
    assert pair.shape == (2, 3, 32, 32) and pair.min() >= -1 and pair.max() <= 1  # 8x the latents' 4 px
    alone = sample_dit(dit, vae, [5], [2], steps=3)
    assert torch.allclose(pair[1], alone[0], atol=1e-5)
    assert (sample_dit(dit, vae, [5], [2], steps=3, guidance_scale=4.0) - alone).abs().mean() > 1e-3


def test_a_dit_scale_below_one_is_the_plain_conditional_model(tiny_dit):
    dit, vae = tiny_dit
    conditional = sample_dit(dit, vae, [5], [2], steps=3)
    assert torch.allclose(sample_dit(dit, vae, [5], [2], steps=3, guidance_scale=0.5), conditional, atol=1e-5)
