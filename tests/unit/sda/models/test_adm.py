"""guided-diffusion (ADM) checkpoints in diffusers: key mapping, the QKV head order, flags."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UNet2DModel

from sda.models.adm import (AdmCheckpointError, adm_to_diffusers_state_dict, adm_unet_config, adm_unet_from_state_dict, diffusers_to_adm_state_dict, load_adm_unet)

# small configs of the real architecture: resnet up/down + scale-shift (the ADM-256 uncond shape),
# conv resampling + additive time embedding + classes + num_heads instead of head channels
CONFIGS = [
    dict(image_size=32, num_channels=32, num_res_blocks=2, attention_resolutions="16,8", num_head_channels=16,
         learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True, channel_mult="1,2,2"),
    dict(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16", num_heads=2,
         learn_sigma=False, resblock_updown=False, use_scale_shift_norm=False, channel_mult="1,2", class_cond=True),
]


def _random_unet(cfg: dict) -> UNet2DModel:
    torch.manual_seed(0)
    unet = UNet2DModel(**adm_unet_config(**cfg)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    return unet


@pytest.mark.parametrize("cfg", CONFIGS)
def test_round_trip_through_the_guided_diffusion_layout(cfg):
    unet = _random_unet(cfg)
    adm = diffusers_to_adm_state_dict(unet.state_dict(), **cfg)
    assert not any(k.startswith(("down_blocks", "up_blocks", "mid_block")) for k in adm)
    assert all(adm[k].ndim == 3 for k in adm if k.endswith(("qkv.weight", "proj_out.weight")))
    back = adm_unet_from_state_dict(adm, **cfg)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 900])
    y = torch.tensor([1, 999]) if cfg.get("class_cond") else None
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=y).sample, back(x, t, class_labels=y).sample)
    assert unet(x, t, class_labels=y).sample.shape[1] == (6 if cfg["learn_sigma"] else 3)


def _legacy_attention(x: torch.Tensor, prefix: str, adm: dict, heads: int) -> torch.Tensor:
    """guided-diffusion's AttentionBlock with QKVAttentionLegacy, written from its definition:
    qkv rows are grouped per head as (q, k, v) of head_dim each."""
    b, c, h, w = x.shape
    norm = torch.nn.functional.group_norm(x, 32, adm[f"{prefix}.norm.weight"], adm[f"{prefix}.norm.bias"], 1e-5)
    qkv = torch.nn.functional.conv1d(norm.reshape(b, c, -1), adm[f"{prefix}.qkv.weight"], adm[f"{prefix}.qkv.bias"])
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * ch, h * w).split(ch, dim=1)
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    out = torch.nn.functional.conv1d(a, adm[f"{prefix}.proj_out.weight"], adm[f"{prefix}.proj_out.bias"])
    return x + out.reshape(b, c, h, w)


def test_qkv_is_split_per_head_not_in_three_chunks():
    cfg = CONFIGS[0]  # mid block: 64 channels, head_dim 16 -> 4 heads
    unet = _random_unet(cfg)
    adm = diffusers_to_adm_state_dict(unet.state_dict(), **cfg)
    converted = adm_to_diffusers_state_dict(adm, **cfg)
    for k, v in unet.state_dict().items():
        assert torch.equal(converted[k].reshape(v.shape), v), k
    x = torch.randn(2, 64, 8, 8)
    ref = _legacy_attention(x, "middle_block.1", adm, heads=4)
    with torch.no_grad():
        ours = unet.mid_block.attentions[0](x)
    assert (ours - ref).abs().max() < 1e-5
    # the trap: three equal chunks of the fused weight is a different (wrong) model
    naive = {k: v.clone() for k, v in unet.mid_block.attentions[0].state_dict().items()}
    wq, wk, wv = adm["middle_block.1.qkv.weight"][..., 0].chunk(3)
    naive.update({"to_q.weight": wq, "to_k.weight": wk, "to_v.weight": wv})
    attn = unet.mid_block.attentions[0]
    attn.load_state_dict(naive)
    with torch.no_grad():
        assert (attn(x) - ref).abs().max() > 1e-3


def test_wrong_flags_fail_with_the_key_lists():
    cfg = CONFIGS[0]
    adm = diffusers_to_adm_state_dict(_random_unet(cfg).state_dict(), **cfg)
    with pytest.raises(AdmCheckpointError, match="not used by these flags"):
        adm_unet_from_state_dict(adm, **{**cfg, "num_res_blocks": 1})
    with pytest.raises(AdmCheckpointError, match="not filled"):
        adm_unet_from_state_dict({k: v for k, v in adm.items() if not k.startswith("out.")}, **cfg)
    with pytest.raises(ValueError, match="unknown guided-diffusion model flag"):
        adm_unet_config(num_chanels=8)


@pytest.mark.slow
def test_convert_cli_writes_a_loadable_folder(tmp_path, capsys):
    """The command's main() in this process (the process boundary is not what is tested: its exit status is)."""
    from sda.models.adm import main

    cfg = CONFIGS[0]
    unet = _random_unet(cfg)
    ckpt = tmp_path / "adm.pt"
    torch.save(diffusers_to_adm_state_dict(unet.state_dict(), **cfg), ckpt)
    flags = [f"--{k}={v}" for k, v in cfg.items()]
    assert main(["convert", str(ckpt), str(tmp_path / "out"), *flags]) == 0, capsys.readouterr().err
    loaded = UNet2DModel.from_pretrained(tmp_path / "out" / "unet")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([3])
    with torch.no_grad():
        assert torch.allclose(loaded(x, t).sample, unet(x, t).sample, atol=1e-6)
    assert (tmp_path / "out" / "scheduler" / "scheduler_config.json").is_file()
    assert load_adm_unet(ckpt, **cfg).config.out_channels == 6
    with pytest.raises(FileNotFoundError, match="guided-diffusion"):
        load_adm_unet(tmp_path / "missing.pt", **cfg)
    bad = [f"--{k}={v}" for k, v in {**cfg, "num_res_blocks": 1}.items()]
    capsys.readouterr()
    assert main(["convert", str(ckpt), str(tmp_path / "bad"), *bad]) == 2
    assert "not used by these flags" in capsys.readouterr().err and not (tmp_path / "bad").exists()
