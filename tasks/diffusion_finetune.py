"""Stage diffusion_finetune: the diffusion models, fitted to the source domain.

The domain (``profile``, :mod:`sda.domains`) says which. ``unet`` (embedded, folder): one
class-conditional UNet (with a "null" class, so it is also the unconditional projector) trained from
scratch with EMA on the source train split, at its image size. ``adm+dit`` (imagenet): the
unconditional ADM projector from
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

from sda.config import DiffusionFinetune, ImageNet, Params
from sda.domains import get_domain
from sda.io.shards import load_shards, read_manifest
from sda.io.streaming import endless_batches
from sda.models.adm import load_projector
from sda.models.diffusion import DiffusionInfo, build_unet, save_diffusion
from sda.models.dit import load_dit
from sda.models.schedulers import ddpm_scheduler
from sda.models.training import random_batches, train_epsilon
from sda.runtime import derive_seed
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.diffusion_finetune")

# samples shuffled at a time when fine-tuning on the ImageNet source images (bounds memory, not data size)
FINETUNE_SHUFFLE_BUFFER = 1000


def run(cfg: DiffusionFinetune, seed: int, source_dir: Path, out: Path, device: torch.device) -> DiffusionInfo:
    train = load_shards(source_dir / "train")
    num_classes = int(train.labels.max()) + 1
    s = derive_seed(seed, "diffusion_finetune")
    torch.manual_seed(s)
    unet = build_unet(train.images.shape[1], num_classes, cfg.block_out_channels, cfg.layers_per_block,
                      cfg.attention_levels, cfg.norm_num_groups)
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet2DModel: %.2fM parameters, %d steps of batch %d", n_params / 1e6, cfg.train_steps, cfg.batch_size)
    scheduler = ddpm_scheduler(num_train_timesteps=cfg.num_train_timesteps)
    gen = torch.Generator().manual_seed(s)  # batches, class dropout, timesteps and noise: one stream
    losses = train_epsilon(unet, scheduler, random_batches(train.images, train.labels, cfg.batch_size, gen, device),
                           steps=cfg.train_steps, lr=cfg.lr, seed=s, generator=gen, null_label=num_classes,
                           null_label_prob=cfg.null_label_prob, warmup_steps=max(1, cfg.train_steps // 20),
                           ema_decay=cfg.ema_decay, device=device, desc="diffusion")
    tail = float(np.mean(losses[-100:]))
    log.info("final loss (mean of last 100 steps): %.4f", tail)
    curve = [round(float(np.mean(losses[i: i + 50])), 5) for i in range(0, len(losses), 50)]
    info = DiffusionInfo(num_classes=num_classes, null_label=num_classes, parameters=n_params, final_loss=tail,
                         loss_every_50_steps=curve, seed=s)
    save_diffusion(out, unet, scheduler, info)
    return info


def run_imagenet(cfg: ImageNet, seed: int, source_dir: Path, out: Path, device: torch.device,
                 loader_workers: int = 0) -> DiffusionInfo:
    """The source train images are streamed (:func:`sda.io.streaming.endless_batches`), never loaded whole."""
    classes = json.loads((source_dir / "classes.json").read_text())
    adm = load_projector(cfg.adm_checkpoint, cfg.adm_flags).to(device).eval()
    transformer, vae = load_dit(cfg.dit, device)
    info = DiffusionInfo(profile="imagenet", num_classes=len(classes["names"]), classes=classes["selected"],
                         null_label=None, generator="dit", adm_checkpoint=cfg.adm_checkpoint, dit=cfg.dit,
                         finetune_steps=cfg.finetune_steps, seed=derive_seed(seed, "diffusion_finetune"))
    sched = ddpm_scheduler(learn_sigma=adm.config.out_channels == 6)
    if cfg.finetune_steps > 0:
        train_dir, s = source_dir / "train", info.seed
        log.info("fine-tuning ADM and DiT for %d steps of batch %d on %d source images", cfg.finetune_steps,
                 cfg.finetune_batch_size, read_manifest(train_dir)["count"])
        stream = dict(seed=s, workers=loader_workers, shuffle_buffer=FINETUNE_SHUFFLE_BUFFER)
        kw = dict(steps=cfg.finetune_steps, lr=cfg.finetune_lr, device=device)
        adm_losses = train_epsilon(adm, sched, endless_batches(train_dir, cfg.finetune_batch_size, labels=False,
                                                               **stream), seed=s, desc="finetune ADM", **kw)
        sf = vae.config.scaling_factor
        dit_losses = train_epsilon(transformer, ddpm_scheduler(learn_sigma=True, clip_sample=False),
                                   endless_batches(train_dir, cfg.finetune_batch_size, **stream), seed=s + 1,
                                   encode=lambda x: vae.encode(x).latent_dist.sample() * sf, desc="finetune DiT", **kw)
        info.losses = {"adm": [round(v, 5) for v in adm_losses], "dit": [round(v, 5) for v in dit_losses]}
    save_diffusion(out, adm, sched, info, dit=(transformer, vae))
    log.info("projector ADM %.1fM parameters, generator DiT %.1fM parameters",
             sum(p.numel() for p in adm.parameters()) / 1e6, sum(p.numel() for p in transformer.parameters()) / 1e6)
    return info


def _main(params: Params, args: argparse.Namespace) -> int | None:
    if get_domain(params.profile).diffusion == "adm+dit":
        run_imagenet(params.imagenet, params.runtime.seed, DATA / "source_data", DATA / "diffusion_finetune",
                     args.device, params.runtime.loader_workers)
        return params.imagenet.finetune_steps * params.imagenet.finetune_batch_size or None
    cfg = params.diffusion_finetune
    run(cfg, params.runtime.seed, DATA / "source_data", DATA / "diffusion_finetune", args.device)
    return cfg.train_steps * cfg.batch_size  # images seen in training


if __name__ == "__main__":
    stage_main("diffusion_finetune", __doc__, _main)
