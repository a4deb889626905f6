"""guided-diffusion (ADM) checkpoints as diffusers ``UNet2DModel`` + ``DDPMScheduler`` (docs/method.md).

    unet = load_adm_unet("256x256_diffusion_uncond.pt", image_size=256, num_channels=256,
                         num_res_blocks=2, attention_resolutions="32,16,8", num_head_channels=64,
                         learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)
    scheduler = ddpm_scheduler(learn_sigma=True)          # sda.models.schedulers

    python -m sda.models.adm convert CHECKPOINT OUT_DIR --image_size 256 ...   # a diffusion model folder

The flags are guided-diffusion's model flags, with its names and defaults. The mapping is exact
(no approximation): guided-diffusion's ``UNetModel`` and diffusers' ``UNet2DModel`` compute the same
function once the weights are renamed, with one re-layout: the legacy attention's fused QKV conv
weight ``(3C, C, 1)`` is head-interleaved, i.e. laid out as ``(heads, 3, head_dim, C)``; splitting it
into three equal chunks instead (as diffusers' consistency-model script does) is silently wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from sda.models.adm_flags import ADM_256_UNCOND, ADM_DEFAULTS
from sda.models.diffusion import save_diffusion
from sda.models.schedulers import ddpm_scheduler

__all__ = ["ADM_256_UNCOND", "ADM_DEFAULTS", "AdmCheckpointError", "adm_to_diffusers_state_dict", "adm_unet_config",
           "adm_unet_from_state_dict", "diffusers_to_adm_state_dict", "load_adm_unet", "load_projector"]

WHERE_TO_GET = ("guided-diffusion checkpoints (e.g. 256x256_diffusion_uncond.pt) are published with "
                "https://github.com/openai/guided-diffusion; download them once and point params at the file")


class AdmCheckpointError(ValueError):
    """The checkpoint does not fit the flags: lists the unused keys and the unfilled parameters."""


def _channel_mult(image_size: int, channel_mult: str) -> tuple[float, ...]:
    if channel_mult:
        return tuple(float(c) if "." in c else int(c) for c in channel_mult.split(","))
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
             32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ValueError(f"unsupported image_size {image_size} without channel_mult (guided-diffusion knows {sorted(table)})")
    return table[image_size]


def _flags(flags: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(flags) - set(ADM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown guided-diffusion model flag(s) {unknown}; known: {sorted(ADM_DEFAULTS)}")
    f = {**ADM_DEFAULTS, **flags}
    if f["use_new_attention_order"]:
        raise ValueError("use_new_attention_order=True is not supported (the published ADM checkpoints use the legacy order)")
    if f["num_heads_upsample"] not in (-1, f["num_heads"]):
        raise ValueError("num_heads_upsample different from num_heads cannot be expressed in UNet2DModel")
    return f


def _levels(f: dict[str, Any]) -> tuple[list[int], list[bool]]:
    mult = _channel_mult(f["image_size"], f["channel_mult"])
    chans = [int(m * f["num_channels"]) for m in mult]
    ds_attn = {f["image_size"] // int(r) for r in str(f["attention_resolutions"]).split(",") if r}
    attn = [2**level in ds_attn for level in range(len(mult))]
    return chans, attn


def adm_unet_config(**flags: Any) -> dict[str, Any]:
    """The ``UNet2DModel`` config equivalent to guided-diffusion's ``create_model(**flags)``."""
    f = _flags(flags)
    chans, attn = _levels(f)
    if f["num_head_channels"] != -1:
        head_dim: int | None = f["num_head_channels"]
    elif f["num_heads"] == 1:
        head_dim = None  # one head of the block's width
    else:
        widths = {c for c, a in zip(chans, attn) if a} | {chans[-1]}
        if len(widths) != 1:
            raise ValueError("num_heads > 1 with num_head_channels=-1 gives a different head width per level, "
                             "which UNet2DModel cannot express; guided-diffusion's 256/512 models use num_head_channels=64")
        head_dim = widths.pop() // f["num_heads"]
    resnet_updown = f["resblock_updown"]
    down = [("AttnDownBlock2D" if a else ("ResnetDownsampleBlock2D" if resnet_updown else "DownBlock2D")) for a in attn]
    up = [("AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if resnet_updown else "UpBlock2D")) for a in attn][::-1]
    return {
        "sample_size": f["image_size"],
        "in_channels": 3,
        "out_channels": 6 if f["learn_sigma"] else 3,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "block_out_channels": tuple(chans),
        "layers_per_block": f["num_res_blocks"],
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "resnet" if resnet_updown else "conv",
        "upsample_type": "resnet" if resnet_updown else "conv",
        "dropout": float(f["dropout"]),
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,  # without it the mid-block attention silently loses its GroupNorm
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if f["use_scale_shift_norm"] else "default",
        "add_attention": True,
        "num_class_embeds": 1000 if f["class_cond"] else None,
    }


# -- key mapping ---------------------------------------------------------------------------------
def _resnet(src: str, dst: str) -> dict[str, str]:
    m = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
         "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    return {f"{src}.{a}.{p}": f"{dst}.{b}.{p}" for a, b in m.items() for p in ("weight", "bias")}


def _attention(src: str, dst: str) -> dict[str, str]:
    # qkv is handled separately (head-interleaved split); the rest is a rename
    return {f"{src}.norm.weight": f"{dst}.group_norm.weight", f"{src}.norm.bias": f"{dst}.group_norm.bias",
            f"{src}.proj_out.weight": f"{dst}.to_out.0.weight", f"{src}.proj_out.bias": f"{dst}.to_out.0.bias"}


def _plan(f: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(rename map guided-diffusion key -> diffusers key, attention prefixes (src, dst) with a qkv)."""
    chans, attn = _levels(f)
    R, L = f["num_res_blocks"], len(chans)
    names: dict[str, str] = {}
    attns: list[tuple[str, str]] = []
    for p in ("weight", "bias"):
        names[f"time_embed.0.{p}"] = f"time_embedding.linear_1.{p}"
        names[f"time_embed.2.{p}"] = f"time_embedding.linear_2.{p}"
        names[f"input_blocks.0.0.{p}"] = f"conv_in.{p}"
        names[f"out.0.{p}"] = f"conv_norm_out.{p}"
        names[f"out.2.{p}"] = f"conv_out.{p}"
    if f["class_cond"]:
        names["label_emb.weight"] = "class_embedding.weight"

    def sampler(src: str, dst: str) -> None:
        if f["resblock_updown"]:
            names.update(_resnet(src, dst))
        else:
            conv = "op" if "downsamplers" in dst else "conv"
            names.update({f"{src}.{conv}.{p}": f"{dst}.conv.{p}" for p in ("weight", "bias")})

    idx = 1
    for lvl in range(L):
        for r in range(R):
            names.update(_resnet(f"input_blocks.{idx}.0", f"down_blocks.{lvl}.resnets.{r}"))
            if attn[lvl]:
                attns.append((f"input_blocks.{idx}.1", f"down_blocks.{lvl}.attentions.{r}"))
            idx += 1
        if lvl != L - 1:
            sampler(f"input_blocks.{idx}.0", f"down_blocks.{lvl}.downsamplers.0")
            idx += 1
    names.update(_resnet("middle_block.0", "mid_block.resnets.0"))
    attns.append(("middle_block.1", "mid_block.attentions.0"))
    names.update(_resnet("middle_block.2", "mid_block.resnets.1"))
    idx = 0
    for u, lvl in enumerate(reversed(range(L))):
        for i in range(R + 1):
            names.update(_resnet(f"output_blocks.{idx}.0", f"up_blocks.{u}.resnets.{i}"))
            if attn[lvl]:
                attns.append((f"output_blocks.{idx}.1", f"up_blocks.{u}.attentions.{i}"))
            if lvl and i == R:
                sampler(f"output_blocks.{idx}.{2 if attn[lvl] else 1}", f"up_blocks.{u}.upsamplers.0")
            idx += 1
    for src, dst in attns:
        names.update(_attention(src, dst))
    return names, [f"{s}|{d}" for s, d in attns]


def _heads(f: dict[str, Any], channels: int) -> int:
    return channels // f["num_head_channels"] if f["num_head_channels"] != -1 else f["num_heads"]


def adm_to_diffusers_state_dict(state: dict[str, torch.Tensor], **flags: Any) -> dict[str, torch.Tensor]:
    """Rename / re-layout a guided-diffusion ``UNetModel`` state dict for :func:`adm_unet_config`.

    Raises :class:`AdmCheckpointError` listing every checkpoint key the flags do not use.
    """
    f = _flags(flags)
    names, attns = _plan(f)
    out: dict[str, torch.Tensor] = {}
    used = set()
    for src, dst in names.items():
        if src in state:
            out[dst] = state[src]
            used.add(src)
    for pair in attns:
        src, dst = pair.split("|")
        w, b = state.get(f"{src}.qkv.weight"), state.get(f"{src}.qkv.bias")
        if w is None or b is None:
            continue
        used |= {f"{src}.qkv.weight", f"{src}.qkv.bias"}
        c = w.shape[1]
        heads = _heads(f, c)
        # legacy QKV order: rows are (head, q|k|v, head_dim) -- split per head, not in three chunks
        w3 = w.reshape(heads, 3, c // heads, c)
        b3 = b.reshape(heads, 3, c // heads)
        for j, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{dst}.{name}.weight"] = w3[:, j].reshape(c, c).contiguous()
            out[f"{dst}.{name}.bias"] = b3[:, j].reshape(c).contiguous()
        if f"{dst}.to_out.0.weight" in out:  # proj_out is a 1-D conv (C, C, 1); to_out a linear (C, C)
            out[f"{dst}.to_out.0.weight"] = out[f"{dst}.to_out.0.weight"].reshape(c, c)
    unused = sorted(set(state) - used)
    if unused:
        raise AdmCheckpointError(f"{len(unused)} checkpoint key(s) not used by these flags (wrong flags?): {unused[:40]}")
    return out


def diffusers_to_adm_state_dict(unet_state: dict[str, torch.Tensor], **flags: Any) -> dict[str, torch.Tensor]:
    """The inverse of :func:`adm_to_diffusers_state_dict`: a guided-diffusion state dict (e.g. to
    use a model fine-tuned here with the reference code)."""
    f = _flags(flags)
    names, attns = _plan(f)
    out = {src: unet_state[dst] for src, dst in names.items() if dst in unet_state}
    for pair in attns:
        src, dst = pair.split("|")
        q = unet_state[f"{dst}.to_q.weight"]
        c = q.shape[0]
        heads = _heads(f, c)
        w = torch.stack([unet_state[f"{dst}.{n}.weight"].reshape(heads, c // heads, c) for n in ("to_q", "to_k", "to_v")], 1)
        b = torch.stack([unet_state[f"{dst}.{n}.bias"].reshape(heads, c // heads) for n in ("to_q", "to_k", "to_v")], 1)
        out[f"{src}.qkv.weight"] = w.reshape(3 * c, c, 1).contiguous()
        out[f"{src}.qkv.bias"] = b.reshape(3 * c).contiguous()
        out[f"{src}.proj_out.weight"] = unet_state[f"{dst}.to_out.0.weight"].reshape(c, c, 1)
    return out


def load_adm_unet(checkpoint_path: str | Path, **flags: Any) -> UNet2DModel:
    """A ``UNet2DModel`` (fp32, eval mode) with the weights of a guided-diffusion checkpoint.

    ``checkpoint_path``: the ``.pt`` state dict as guided-diffusion saves it (read with
    ``weights_only=True``). Every key must be used and every parameter filled, else
    :class:`AdmCheckpointError` lists them.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"ADM checkpoint {path} not found. {WHERE_TO_GET}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise AdmCheckpointError(f"{path}: expected a state dict (guided-diffusion's format), got {type(state).__name__}")
    return adm_unet_from_state_dict(state, **flags)


def load_projector(path: str | Path, flags: dict[str, Any], key: str = "imagenet.adm_checkpoint") -> UNet2DModel:
    """An unconditional ADM projector (``imagenet.adm_checkpoint`` / ``adm_flags``, or ``folder``'s):
    a guided-diffusion checkpoint file converted with ``flags``, or a folder written by
    ``python -m sda.models.adm convert`` (its ``unet/``). ``key``: the setting named in errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{key} {path} not found: point it at guided-diffusion's "
                                "256x256_diffusion_uncond.pt (or a folder written by `python -m sda.models.adm convert`)")
    if path.is_dir():
        if not (path / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"{path}/unet/config.json not found: {key} must be a "
                                    "guided-diffusion .pt file or a folder written by `python -m sda.models.adm convert`")
        return UNet2DModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)
    return load_adm_unet(path, **flags)


def adm_unet_from_state_dict(state: dict[str, torch.Tensor], **flags: Any) -> UNet2DModel:
    unet = UNet2DModel(**adm_unet_config(**flags))
    converted = adm_to_diffusers_state_dict(state, **flags)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise AdmCheckpointError(f"{len(missing)} model parameter(s) not filled by the checkpoint (wrong flags?): {missing[:40]}")
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in converted.items()
           if k in expected and v.shape != expected[k].shape]
    if bad:
        raise AdmCheckpointError(f"{len(bad)} shape mismatch(es) (wrong flags?): {bad[:20]}")
    unet.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    return unet.eval()


# -- CLI -----------------------------------------------------------------------------------------
def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "t", "y"):
        return True
    if s.lower() in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda.models.adm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="convert a guided-diffusion checkpoint to a diffusers folder")
    conv.add_argument("checkpoint")
    conv.add_argument("out_dir")
    conv.add_argument("--preset", choices=["256x256_uncond"], help="the flags of guided-diffusion's "
                      "256x256_diffusion_uncond.pt (the paper's projector); explicit flags still win")
    for k, v in ADM_DEFAULTS.items():
        typ = _parse_bool if isinstance(v, bool) else type(v)
        conv.add_argument(f"--{k}", type=typ, default=v, help=f"guided-diffusion flag (default {v!r})")
    if parser.parse_known_args(argv)[0].preset:
        conv.set_defaults(**ADM_256_UNCOND)
    args = parser.parse_args(argv)
    flags = {k: getattr(args, k) for k in ADM_DEFAULTS}
    try:
        unet = load_adm_unet(args.checkpoint, **flags)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_diffusion(args.out_dir, unet, ddpm_scheduler(learn_sigma=flags["learn_sigma"]))
    n = sum(p.numel() for p in unet.parameters())
    print(f"wrote {args.out_dir} (unet/ + scheduler/, {n / 1e6:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
