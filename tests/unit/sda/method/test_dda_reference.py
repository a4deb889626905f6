"""The reference-structured DDA loop (sda.method.dda_reference): guided-diffusion's respaced coefficients and
ancestral step. Its draw-for-draw parity with the pipeline's projection is in test_dda.py."""

import numpy as np
import torch

from sda.method.dda_reference import ReferenceDiffusion, reference_project
from sda.method.sampling import respaced_timesteps


def test_the_schedule_is_the_linear_one_respaced_with_betas_from_consecutive_kept_steps():
    d = ReferenceDiffusion(1000, 100)
    full = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert d.timestep_map.tolist() == respaced_timesteps(1000, 100)
    assert np.allclose(d.alphas_cumprod, full[d.timestep_map])
    assert np.allclose(np.cumprod(1 - d.betas), d.alphas_cumprod)  # the kept steps compose to the same noise
    assert np.allclose(ReferenceDiffusion(1000, 1000).betas, np.linspace(1e-4, 0.02, 1000))
    assert np.allclose(ReferenceDiffusion(500, 500).betas, np.linspace(2e-4, 0.04, 500))  # scaled to T


def test_q_sample_mixes_each_image_with_its_noise_at_its_own_step():
    d = ReferenceDiffusion(1000, 10)
    x0, noise = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    i = torch.tensor([0, 7])
    xt = d.q_sample(x0, i, noise)
    for row, step in enumerate(i.tolist()):
        a = d.alphas_cumprod[step]
        assert torch.allclose(xt[row], float(np.sqrt(a)) * x0[row] + float(np.sqrt(1 - a)) * noise[row], atol=1e-6)


def test_a_step_with_the_true_noise_predicts_the_image_at_the_models_own_timestep():
    d = ReferenceDiffusion(1000, 10)
    x0, noise = torch.rand(1, 3, 4, 4) - 0.5, torch.randn(1, 3, 4, 4)
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return noise

    i = torch.tensor([5])
    out = d.p_sample(model, d.q_sample(x0, i, noise), i)
    assert seen == [[d.timestep_map[5]]] and torch.allclose(out["pred_xstart"], x0, atol=1e-4)
    # the last step adds no noise: its sample is the predicted image, whatever the generator holds
    samples = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        samples.append(d.p_sample(model, d.q_sample(x0, torch.tensor([0]), noise), torch.tensor([0]))["sample"])
    assert torch.equal(samples[0], samples[1]) and torch.allclose(samples[0], x0, atol=1e-4)


def test_the_learned_variance_interpolates_between_the_posterior_and_beta_in_log_space():
    d = ReferenceDiffusion(1000, 10)
    x, i = torch.randn(1, 3, 4, 4), torch.tensor([5])
    eps = torch.zeros(1, 3, 4, 4)
    samples = {}
    for v in (-1.0, 1.0):  # the model's variance output: -1 the clipped posterior variance, +1 beta
        torch.manual_seed(0)
        samples[v] = d.p_sample(lambda x, t: torch.cat([eps, torch.full_like(eps, v)], 1), x, i)["sample"]
    torch.manual_seed(0)
    z = torch.randn_like(x)
    sigma = {-1.0: np.exp(0.5 * d.posterior_log_variance_clipped[5]), 1.0: np.sqrt(d.betas[5])}
    assert torch.allclose(samples[1.0] - samples[-1.0], float(sigma[1.0] - sigma[-1.0]) * z, atol=1e-5)


def test_the_reference_loop_draws_from_the_global_generator():
    x = torch.rand(2, 3, 8, 8) * 2 - 1

    def project(seed):
        torch.manual_seed(seed)
        return reference_project(lambda xt, t: torch.zeros_like(xt), x, respacing=10, N=3, D=2, scale=1.0)

    a = project(0)
    assert a.shape == x.shape and torch.equal(project(0), a) and not torch.allclose(project(1), a)
