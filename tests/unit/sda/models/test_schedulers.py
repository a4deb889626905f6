"""sda.models.schedulers: guided-diffusion's linear-beta schedule with epsilon prediction, its respaced
timesteps, and the variance / clipping each kind of model needs."""

from __future__ import annotations

import pytest
import torch

from sda.models.schedulers import ddpm_scheduler


# moved from tests/unit/sda/models/test_adm.py
def test_scheduler_timesteps_are_guided_diffusions_space_timesteps():
    s = ddpm_scheduler(learn_sigma=True)
    s.set_timesteps(100)
    ts = sorted(s.timesteps.tolist())
    assert ts == [round(i * 999 / 99) for i in range(100)]  # space_timesteps(1000, "100")
    assert ts[:7] == [0, 10, 20, 30, 40, 50, 61] and ts[-1] == 999
    assert s.config.variance_type == "learned_range" and s.config.clip_sample
    assert abs(float(s.betas[0]) - 1e-4) < 1e-9 and abs(float(s.betas[-1]) - 0.02) < 1e-9


def test_the_betas_are_linear_and_the_model_predicts_epsilon():
    s = ddpm_scheduler()
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32))
    assert s.config.prediction_type == "epsilon" and s.config.variance_type == "fixed_small"
    short = ddpm_scheduler(num_train_timesteps=10)
    assert len(short.betas) == 10 and abs(float(short.betas[-1]) - 0.02) < 1e-9


@pytest.mark.parametrize("clip", [True, False])
def test_the_predicted_x0_is_clamped_to_the_unit_range_only_for_pixel_models(clip):
    """With a zero noise prediction at t = 0, the step's x0 is the input itself (almost: alpha_bar_0 < 1)."""
    s = ddpm_scheduler(clip_sample=clip)
    s.set_timesteps(1000)
    x = torch.full((1, 1, 2, 2), 3.0)
    x0 = s.step(torch.zeros_like(x), 0, x).pred_original_sample
    assert float(x0.max()) == (1.0 if clip else pytest.approx(3.0, abs=1e-3))


def test_a_learned_variance_model_gives_twice_the_channels_and_the_step_reads_both():
    s = ddpm_scheduler(learn_sigma=True)
    s.set_timesteps(10)
    x = torch.zeros(1, 3, 2, 2)
    out = torch.cat([torch.zeros_like(x), torch.full_like(x, -1.0)], 1)  # epsilon, then the variance interpolation
    other = torch.cat([torch.zeros_like(x), torch.full_like(x, 1.0)], 1)
    t = int(s.timesteps[0])
    a = s.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = s.step(other, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert a.shape == x.shape and not torch.allclose(a, b)  # the variance channels set the noise's scale
