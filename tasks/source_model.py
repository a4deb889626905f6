"""Stage source_model: the source classifier.

Embedded profile: trained on the source train split. ImageNet profile: timm ``source_model.arch``
with the pretrained weights of ``imagenet.classifier_weights`` (no training), evaluated the
reference way (resize 256 bicubic, centre crop 224, ImageNet mean / std). Writes
``data/source_model/`` (``model.safetensors`` + ``config.json`` with preprocessing and log).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sda.models.classifiers import (create_classifier, load_pretrained_classifier, predict_logits, save_classifier, train_classifier)
from sda.config import ImageNet, Params, SourceModel
from sda.io.shards import load_shards, read_manifest
from sda.runtime import derive_seed
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.source_model")

# The embedded domain feeds the classifier images in [-1, 1].
EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.5, 0.5, 0.5)


def run(cfg: SourceModel, seed: int, source_dir: Path, out: Path, device: torch.device) -> dict:
    train, val = load_shards(source_dir / "train"), load_shards(source_dir / "val")
    num_classes = int(max(train.labels.max(), val.labels.max())) + 1
    s = derive_seed(seed, "source_model")
    torch.manual_seed(s)
    kwargs = {"width": cfg.width} if cfg.arch == "sda_cnn3" else {}
    model = create_classifier(cfg.arch, num_classes, **kwargs)
    history = train_classifier(model, train.images, train.labels, mean=EMBEDDED_MEAN, std=EMBEDDED_STD,
                               epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing, seed=s, device=device, desc="source_model")
    val_acc = float((predict_logits(model, val.images, mean=EMBEDDED_MEAN, std=EMBEDDED_STD, device=device)
                     .argmax(1).numpy() == val.labels).mean() * 100)
    log.info("source model: train acc %.1f%%, clean val acc %.1f%%", 100 * history[-1]["acc"], val_acc)
    config = {"arch": cfg.arch, "num_classes": num_classes, "kwargs": kwargs, "mean": list(EMBEDDED_MEAN),
              "std": list(EMBEDDED_STD), "val_acc": val_acc, "history": history, "seed": s}
    save_classifier(model, out, config)
    return config


def run_imagenet(arch: str, cfg: ImageNet, out: Path) -> dict:
    model, num_classes = load_pretrained_classifier(arch, cfg.classifier_weights)
    config = {"arch": arch, "num_classes": num_classes, "kwargs": {}, "mean": list(IMAGENET_DEFAULT_MEAN),
              "std": list(IMAGENET_DEFAULT_STD), "resize": cfg.resize_size, "crop": cfg.crop_size,
              "weights": str(cfg.classifier_weights)}
    log.info("source model: timm %s from %s (%d classes), input resize %d -> crop %d", arch,
             cfg.classifier_weights, num_classes, cfg.resize_size, cfg.crop_size)
    save_classifier(model, out, config)
    return config


def _main(params: Params, args: argparse.Namespace) -> int | None:
    if params.profile == "imagenet":
        run_imagenet(params.source_model.arch, params.imagenet, DATA / "source_model")
        return None
    run(params.source_model, params.runtime.seed, DATA / "source_data", DATA / "source_model", args.device)
    return read_manifest(DATA / "source_data" / "train")["count"] * params.source_model.epochs  # images trained on


if __name__ == "__main__":
    stage_main("source_model", __doc__, _main)
