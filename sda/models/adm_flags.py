"""guided-diffusion's (ADM) model flags, with its names: its defaults and the paper's projector's.

A leaf without torch: the domains' params sections default their ``adm_flags`` to
:data:`ADM_256_UNCOND` before any model library is loaded; :mod:`sda.models.adm` builds the UNet from them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ADM_256_UNCOND", "ADM_DEFAULTS"]

# guided-diffusion's script_util.model_and_diffusion_defaults() (model part), same names.
ADM_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
}

# the flags of guided-diffusion's 256x256_diffusion_uncond.pt, the paper's projector (docs/method.md)
ADM_256_UNCOND: dict[str, Any] = {
    "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "attention_resolutions": "32,16,8",
    "num_head_channels": 64, "learn_sigma": True, "resblock_updown": True, "use_scale_shift_norm": True,
    "class_cond": False,
}
