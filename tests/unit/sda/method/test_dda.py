import pytest
import torch
from resize_right import resize

from sda.config import Projection
from sda.method.dda import ProjectionCost, low_pass, project

KW = dict(respacing=20, N=4, D=4, scale=6.0)


def _images(n, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _run(unet, sched, x, seed=0, cost=None, **kw):
    labels = torch.full((len(x),), 3)
    return project(unet, sched, x, Projection(**{**KW, **kw}), class_labels=labels,
                   generator=torch.Generator().manual_seed(seed), cost=cost)


@pytest.mark.slow
def test_deterministic_from_seed_and_shape(tiny_unet, scheduler):
    x = _images(4)
    a, b = _run(tiny_unet, scheduler, x), _run(tiny_unet, scheduler, x)
    c = _run(tiny_unet, scheduler, x, seed=1)
    assert a.shape == x.shape and not a.requires_grad
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


def test_scheduler_left_usable(tiny_unet, scheduler):
    before = dict(scheduler.config)
    _run(tiny_unet, scheduler, _images(2))
    assert dict(scheduler.config) == before
    assert scheduler.num_inference_steps is None  # the caller's scheduler was never set_timesteps'd
    scheduler.set_timesteps(10)  # and it still works for the next user
    assert len(scheduler.timesteps) == 10


@pytest.mark.slow
def test_batch_norm_couples_batch_per_sample_norm_does_not(tiny_unet, scheduler):
    a, b, c = _images(1, 1), _images(1, 2), _images(1, 3) * 0.1
    ab, ac = torch.cat([a, b]), torch.cat([a, c])
    ref_ab, ref_ac = _run(tiny_unet, scheduler, ab), _run(tiny_unet, scheduler, ac)
    ps_ab = _run(tiny_unet, scheduler, ab, per_sample_norm=True)
    ps_ac = _run(tiny_unet, scheduler, ac, per_sample_norm=True)
    # per-sample: image a's projection does not depend on its batch-mate (same noise draws)
    assert (ps_ab[0] - ps_ac[0]).abs().max() < 1e-4
    # reference batch-wide norm: it does
    assert (ref_ab[0] - ref_ac[0]).abs().max() > 1e-3


def test_off_by_one_switch_changes_noise_level(tiny_unet, scheduler):
    # N=1: the fix noises at ts[0] = t 0 (almost clean), the reference at ts[1] (t 53), then both
    # denoise once at t 0. With no guidance the fixed projection must stay much closer to the input.
    x = _images(4)
    ref = _run(tiny_unet, scheduler, x, N=1, scale=0.0)
    fixed = _run(tiny_unet, scheduler, x, N=1, scale=0.0, fix_off_by_one=True)
    assert (fixed - x).abs().mean() < 0.05
    assert (ref - x).abs().mean() > 2 * (fixed - x).abs().mean()


def test_guidance_pulls_towards_reference(tiny_unet, scheduler):
    x = _images(4)
    free = _run(tiny_unet, scheduler, x, scale=0.0, N=8)
    guided = _run(tiny_unet, scheduler, x, scale=20.0, N=8)
    err = lambda y: (low_pass(y, 4) - low_pass(x, 4)).norm()  # noqa: E731
    assert err(guided) < err(free)


def test_the_work_is_counted_where_it_happens(tiny_unet, scheduler):
    """DDA: a UNet forward and an input-gradient backward per guided step and image (3 forward-
    equivalents); ILVR: the forward alone. Counts add up over calls."""
    cost = ProjectionCost()
    _run(tiny_unet, scheduler, _images(3), cost=cost, N=4)
    assert cost.as_dict() == {"images": 3, "forwards": 12, "backwards": 12} and cost.per_image() == 12.0
    _run(tiny_unet, scheduler, _images(2), cost=cost, N=2)
    assert (cost.images, cost.forward_equivalents) == (5, 3 * 12 + 2 * 6)
    ilvr = ProjectionCost()
    _run(tiny_unet, scheduler, _images(3), cost=ilvr, N=4, method="ilvr")
    assert ilvr.as_dict() == {"images": 3, "forwards": 12, "backwards": 0} and ilvr.per_image() == 4.0


def test_ilvr_takes_the_low_frequencies_of_the_reference(tiny_unet, scheduler):
    """ILVR's last step swaps the sample's low-pass content for the reference's: its projection's low
    frequencies are far closer to the input's than those of the same denoising without guidance, and
    it is deterministic from the seed."""
    x = _images(4)
    free = _run(tiny_unet, scheduler, x, scale=0.0, N=8)
    ilvr = _run(tiny_unet, scheduler, x, N=8, method="ilvr")
    err = lambda y: (low_pass(y, 4) - low_pass(x, 4)).norm()  # noqa: E731
    assert err(ilvr) < 0.5 * err(free)
    assert torch.equal(ilvr, _run(tiny_unet, scheduler, x, N=8, method="ilvr"))
    assert (ilvr - x).abs().mean() > 1e-3  # the high frequencies are the model's


@pytest.mark.parametrize("kw, msg", [
    ({"N": 20}, "N=20 must be smaller than respacing=20"), ({"N": 0}, "N\n.*greater than or equal to 1"),
    ({"D": 32}, "D must be"), ({"D": 0}, "D\n.*greater than or equal to 1"),
    ({"scale": -1.0}, "scale\n.*greater than or equal to 0"),
])
def test_validation(tiny_unet, scheduler, kw, msg):
    """Projection rejects what it can tell alone; project what needs the images (D over the side)."""
    with pytest.raises(ValueError, match=msg):
        _run(tiny_unet, scheduler, _images(1), **kw)


def test_low_pass_is_resize_right_cubic():
    x = _images(2)
    y = low_pass(x, 4)
    expect = resize(resize(x, scale_factors=0.25), scale_factors=4.0)
    assert torch.allclose(y, expect, atol=1e-6)
    assert torch.equal(low_pass(x, 1), x)
    # linear (the guidance gradient relies on it) and, like the reference, zero-padded at the borders
    assert torch.allclose(low_pass(2 * x, 4), 2 * low_pass(x, 4), atol=1e-5)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert low_pass(flat, 4)[..., 0, 0].max() < low_pass(flat, 4)[..., 8, 8].min()
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2).float().expand(1, 3, 16, 16)
    assert low_pass(checker, 4)[..., 4:12, 4:12].std() < 0.05 * checker.std()  # high frequencies removed


# --- draw-for-draw parity with the reference loop (sda.dda_reference, guided-diffusion's equations)

def _adm_like_unet(size=32):
    """A tiny ADM-shaped UNet (learned sigma: 6 output channels), random weights."""
    from sda.models.adm import adm_unet_config
    from diffusers import UNet2DModel

    flags = dict(image_size=size, num_channels=32, num_res_blocks=1, num_head_channels=16,
                 attention_resolutions="8", channel_mult="1,2,2", learn_sigma=True,
                 use_scale_shift_norm=True, resblock_updown=True)
    torch.manual_seed(0)
    unet = UNet2DModel(**adm_unet_config(**flags)).eval()
    with torch.no_grad():
        for p in unet.parameters():  # guided-diffusion zero-inits output layers; give them weight
            p.add_(torch.randn_like(p) * 0.02)
    return unet


@pytest.mark.slow
def test_project_matches_reference_loop_draw_for_draw():
    from sda.models.schedulers import ddpm_scheduler
    from sda.method.dda_reference import reference_project

    unet = _adm_like_unet()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    kw = dict(respacing=100, N=50, D=4, scale=6.0)
    torch.manual_seed(123)
    ours = project(unet, ddpm_scheduler(learn_sigma=True), x, Projection(**kw))  # generator=None: torch's global generator
    torch.manual_seed(123)
    ref = reference_project(lambda xt, t: unet(xt, t).sample, x, **kw)
    d = (ours - ref).abs()
    assert d.mean() < 1e-4, d.mean()
    assert torch.quantile(d.flatten(), 0.999) < 1e-3
    # and it is a real projection: far from the input and from another seed's
    torch.manual_seed(124)
    other = project(unet, ddpm_scheduler(learn_sigma=True), x, Projection(**kw))
    assert (other - ours).abs().mean() > 100 * d.mean()


@pytest.mark.slow
def test_noise_draws_one_forward_then_one_per_step():
    # project: one draw for the forward noising, then one per step except the last (t = 0 adds
    # no noise); the reference draws at t = 0 too and masks it out. Same sequence, same images.
    from sda.models.schedulers import ddpm_scheduler
    from sda.method.dda_reference import reference_project

    unet = _adm_like_unet(16)
    x = torch.zeros(2, 3, 16, 16)
    N = 3
    kw = dict(respacing=10, N=N, D=2, scale=1.0)

    def next_after(n_draws):
        torch.manual_seed(0)
        for _ in range(n_draws):
            torch.randn(2, 3, 16, 16)
        return torch.randn(4)

    torch.manual_seed(0)
    project(unet, ddpm_scheduler(learn_sigma=True), x, Projection(**kw))
    assert torch.equal(torch.randn(4), next_after(N))
    torch.manual_seed(0)
    reference_project(lambda xt, t: unet(xt, t).sample, x, **kw)
    assert torch.equal(torch.randn(4), next_after(N + 1))
