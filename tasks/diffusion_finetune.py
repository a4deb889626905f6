"""Stage diffusion_finetune: the diffusion models, fitted to the source domain.

Embedded profile: one class-conditional UNet (with a "null" class, so it is also the unconditional
projector) trained from scratch with EMA. ImageNet profile: the unconditional ADM projector from
``imagenet.adm_checkpoint`` (a guided-diffusion state dict, converted exactly, or a converted
folder) and the DiT-XL/2 generator from ``imagenet.dit``; used as they are when
``imagenet.finetune_steps`` is 0 (the paper), fine-tuned on the source train images otherwise.

Writes ``data/diffusion_finetune/``: ``unet/`` + ``scheduler/`` (the projector, ``save_pretrained``),
``dit/`` (ImageNet: ``transformer/`` + ``vae/``) and ``info.json`` (classes, null label, losses).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from sda.adm import adm_scheduler, load_adm_unet
from sda.diffusion import build_unet, finetune_epsilon, make_scheduler, save_diffusion, train_diffusion
from sda.dit import dit_scheduler, load_dit, save_dit
from sda.params import DiffusionFinetune, ImageNet, Params
from sda.runtime import derive_seed
from sda.shards import atomic_dir, atomic_write_json, load_shards, read_manifest
from sda.streaming import endless_batches
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.diffusion_finetune")

# samples shuffled at a time when fine-tuning on the ImageNet source images (bounds memory, not data size)
FINETUNE_SHUFFLE_BUFFER = 1000


def run(cfg: DiffusionFinetune, seed: int, source_dir: Path, out: Path, device: torch.device) -> dict:
    train = load_shards(source_dir / "train")
    num_classes = int(train.labels.max()) + 1
    s = derive_seed(seed, "diffusion_finetune")
    torch.manual_seed(s)
    unet = build_unet(train.images.shape[1], num_classes, cfg.block_out_channels, cfg.layers_per_block,
                      cfg.attention_levels, cfg.norm_num_groups)
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet2DModel: %.2fM parameters, %d steps of batch %d", n_params / 1e6, cfg.train_steps, cfg.batch_size)
    scheduler = make_scheduler(cfg.num_train_timesteps)
    unet, losses = train_diffusion(unet, scheduler, train.images, train.labels, null_label=num_classes,
                                   steps=cfg.train_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                   ema_decay=cfg.ema_decay, null_label_prob=cfg.null_label_prob, seed=s,
                                   device=device)
    tail = float(np.mean(losses[-100:]))
    log.info("final loss (mean of last 100 steps): %.4f", tail)
    curve = [round(float(np.mean(losses[i: i + 50])), 5) for i in range(0, len(losses), 50)]
    info = {"num_classes": num_classes, "null_label": num_classes, "parameters": n_params,
            "final_loss": tail, "loss_every_50_steps": curve, "seed": s}
    save_diffusion(unet, scheduler, out, info)
    return info


def load_projector(cfg: ImageNet) -> UNet2DModel:
    """The ADM projector: a converted folder (``unet/``) or a guided-diffusion checkpoint file."""
    path = Path(cfg.adm_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"imagenet.adm_checkpoint {path} not found: point it at guided-diffusion's "
                                "256x256_diffusion_uncond.pt (or a folder written by `python -m sda.adm convert`)")
    if path.is_dir():
        if not (path / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"{path}/unet/config.json not found: imagenet.adm_checkpoint must be a "
                                    "guided-diffusion .pt file or a folder written by `python -m sda.adm convert`")
        return UNet2DModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)
    return load_adm_unet(path, **cfg.adm_flags)


def run_imagenet(cfg: ImageNet, seed: int, source_dir: Path, out: Path, device: torch.device,
                 loader_workers: int = 0) -> dict:
    """The source train images are streamed (:func:`sda.streaming.endless_batches`), never loaded whole."""
    classes = json.loads((source_dir / "classes.json").read_text())
    adm = load_projector(cfg).to(device).eval()
    transformer, vae = load_dit(cfg.dit, device)
    info = {"profile": "imagenet", "num_classes": len(classes["names"]), "classes": classes["selected"],
            "null_label": None, "generator": "dit", "adm_checkpoint": cfg.adm_checkpoint, "dit": cfg.dit,
            "finetune_steps": cfg.finetune_steps, "seed": derive_seed(seed, "diffusion_finetune")}
    sched = adm_scheduler(learn_sigma=adm.config.out_channels == 6)
    if cfg.finetune_steps > 0:
        train_dir, s = source_dir / "train", info["seed"]
        log.info("fine-tuning ADM and DiT for %d steps of batch %d on %d source images", cfg.finetune_steps,
                 cfg.finetune_batch_size, read_manifest(train_dir)["count"])
        stream = dict(seed=s, workers=loader_workers, shuffle_buffer=FINETUNE_SHUFFLE_BUFFER)
        kw = dict(steps=cfg.finetune_steps, lr=cfg.finetune_lr, device=device)
        adm_losses = finetune_epsilon(adm, sched, endless_batches(train_dir, cfg.finetune_batch_size, labels=False,
                                                                  **stream), seed=s, **kw)
        sf = vae.config.scaling_factor
        dit_losses = finetune_epsilon(transformer, dit_scheduler(), endless_batches(train_dir, cfg.finetune_batch_size,
                                                                                    **stream), seed=s + 1,
                                      encode=lambda x: vae.encode(x).latent_dist.sample() * sf, **kw)
        info["losses"] = {"adm": [round(v, 5) for v in adm_losses], "dit": [round(v, 5) for v in dit_losses]}
    with atomic_dir(out) as tmp:
        adm.save_pretrained(tmp / "unet")
        sched.save_pretrained(tmp / "scheduler")
        save_dit(transformer, vae, tmp / "dit")
        atomic_write_json(tmp / "info.json", info)
    log.info("projector ADM %.1fM parameters, generator DiT %.1fM parameters",
             sum(p.numel() for p in adm.parameters()) / 1e6, sum(p.numel() for p in transformer.parameters()) / 1e6)
    return info


def _main(params: Params, args: argparse.Namespace) -> int | None:
    if params.profile == "imagenet":
        run_imagenet(params.imagenet, params.runtime.seed, DATA / "source_data", DATA / "diffusion_finetune",
                     args.device, params.runtime.loader_workers)
        return params.imagenet.finetune_steps * params.imagenet.finetune_batch_size or None
    cfg = params.diffusion_finetune
    run(cfg, params.runtime.seed, DATA / "source_data", DATA / "diffusion_finetune", args.device)
    return cfg.train_steps * cfg.batch_size  # images seen in training


if __name__ == "__main__":
    stage_main("diffusion_finetune", __doc__, _main)
