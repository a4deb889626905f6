"""Parity with the original research code, not with our own rewrite of it.

guided-diffusion is OpenAI's code as published on PyPI (``guided-diffusion-sdk==1.0.0``, a dev
dependency; compared by hand with openai/guided-diffusion@22e0df8: ``respace.py`` and
``script_util.py`` are byte-identical, ``unet.py`` / ``nn.py`` differ only in gradient
checkpointing, which does not change a forward pass, and ``gaussian_diffusion.py`` only adds
sampling options that are off by default). Its ``UNetModel`` with random weights is the checkpoint
our key mapping must load; its ``SpacedDiffusion`` is the diffusion the DDA loop runs on.

DDA (shiyegao/DDA) publishes no license, so its code is neither vendored nor installed: its
change to guided-diffusion's sampling loop (``image_adapt/guided_diffusion/gaussian_diffusion.py``
at accf067, ``p_sample_loop_progressive``: about ten lines) is restated in :func:`dda_loop` below
line for line, over the original ``q_sample`` / ``p_sample``.
"""

from __future__ import annotations

import pytest
import torch

gd = pytest.importorskip("guided_diffusion.script_util", reason="guided-diffusion-sdk (the dev extra) is not installed")

from resize_right import resize  # noqa: E402

from sda.models.adm import adm_unet_from_state_dict  # noqa: E402
from sda.models.schedulers import ddpm_scheduler
from sda.config import Projection  # noqa: E402
from sda.method.dda import project  # noqa: E402

# small configs of the real architecture, in guided-diffusion's own flag names: the ADM-256
# unconditional shape (resnet up/down, scale-shift norm, head channels, learned sigma) and the
# conditional variant (conv resampling, additive time embedding, classes, a number of heads)
CONFIGS = {
    "adm-uncond-shape": dict(image_size=32, num_channels=32, num_res_blocks=2, attention_resolutions="16,8",
                             num_head_channels=16, learn_sigma=True, resblock_updown=True,
                             use_scale_shift_norm=True, channel_mult="1,2,2"),
    "adm-cond-shape": dict(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16",
                           num_heads=2, learn_sigma=False, resblock_updown=False, use_scale_shift_norm=False,
                           channel_mult="1,2", class_cond=True),
}


def original_unet(flags: dict) -> torch.nn.Module:
    """guided-diffusion's ``create_model(**flags)`` with random weights everywhere (the original
    zero-initialises output layers, which would hide a wrong mapping of them)."""
    args = {**gd.model_and_diffusion_defaults(), **flags}
    model = gd.create_model(**{k: args[k] for k in (
        "image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma", "class_cond",
        "use_checkpoint", "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
        "use_scale_shift_norm", "dropout", "resblock_updown", "use_fp16", "use_new_attention_order")})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_converted_checkpoint_computes_what_guided_diffusion_computes(name):
    flags = CONFIGS[name]
    model = original_unet(flags)
    ours = adm_unet_from_state_dict(model.state_dict(), **flags)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 917])
    y = torch.tensor([7, 999]) if flags.get("class_cond") else None
    with torch.no_grad():
        expected = model(x, t, y=y)
        got = ours(x, t, class_labels=y).sample
        other_t = ours(x, torch.tensor([4, 917]), class_labels=y).sample
    assert got.shape == expected.shape == (2, 6 if flags["learn_sigma"] else 3, 32, 32)
    err = (got - expected).abs().max()
    assert err < 1e-4, err
    assert (other_t - expected).abs().max() > 100 * err  # the comparison can tell models apart


def dda_loop(diffusion, model, ref: torch.Tensor, *, N: int, D: int, scale: float) -> torch.Tensor:
    """DDA's ``p_sample_loop_progressive`` (shiyegao/DDA@accf067), restated over guided-diffusion:
    noise the reference to respaced index N, then at each step take the original ``p_sample`` and
    subtract ``scale`` times the gradient of the batch-wide low-pass distance. Global torch RNG."""
    shape = ref.shape
    shape_u = (shape[0], 3, shape[2], shape[3])
    shape_d = (shape[0], 3, int(shape[2] / D), int(shape[3] / D))

    def low_pass(x):
        return resize(resize(x, scale_factors=1.0 / D, out_shape=shape_d), scale_factors=D, out_shape=shape_u)

    t = torch.tensor([N] * shape[0])
    img = diffusion.q_sample(ref, t, torch.randn(*shape))
    for i in list(range(N))[::-1]:
        t = torch.tensor([i] * shape[0])
        img = img.requires_grad_()
        out = diffusion.p_sample(model, img, t, clip_denoised=True, model_kwargs={})
        difference = low_pass(ref) - low_pass(out["pred_xstart"])
        norm = torch.linalg.norm(difference)
        norm_grad = torch.autograd.grad(outputs=norm, inputs=img)[0]
        out["sample"] -= norm_grad * scale
        img = out["sample"].detach_()
    return img


@pytest.mark.slow
def test_projection_matches_ddas_loop_on_guided_diffusion_draw_for_draw():
    flags = CONFIGS["adm-uncond-shape"]
    model = original_unet(flags)
    unet = adm_unet_from_state_dict(model.state_dict(), **flags)
    # DDA's image_sample.py: the 1000-step linear schedule respaced to 100 steps, learned sigma
    diffusion = gd.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                             timestep_respacing="100")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    kw = dict(N=12, D=4, scale=6.0)
    torch.manual_seed(123)
    expected = dda_loop(diffusion, model, x, **kw)
    torch.manual_seed(123)
    ours = project(unet, ddpm_scheduler(learn_sigma=True), x, Projection(respacing=100, **kw))  # generator=None: the global RNG
    d = (ours - expected).abs()
    assert d.max() < 1e-4, d.max()
    assert d.mean() < 1e-5, d.mean()
    torch.manual_seed(124)
    other_seed = project(unet, ddpm_scheduler(learn_sigma=True), x, Projection(respacing=100, **kw))
    assert (other_seed - expected).abs().mean() > 100 * d.mean()
