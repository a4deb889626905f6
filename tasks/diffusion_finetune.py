"""Stage diffusion_finetune: train the class-conditional diffusion UNet (with a "null" class, so it
is also the unconditional projector) on the source train split, with EMA.

Embedded profile: from scratch. Writes ``data/diffusion_finetune/`` (``unet/``, ``scheduler/`` as
``save_pretrained`` folders, ``info.json`` with the null label and the loss curve).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from sda.diffusion import build_unet, make_scheduler, save_diffusion, train_diffusion
from sda.params import DiffusionFinetune, Params
from sda.runtime import derive_seed
from sda.shards import load_shards
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.diffusion_finetune")


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


def _main(params: Params, args: argparse.Namespace) -> None:
    run(params.diffusion_finetune, params.runtime.seed, DATA / "source_data", DATA / "diffusion_finetune", args.device)


if __name__ == "__main__":
    stage_main("diffusion_finetune", __doc__, _main)
