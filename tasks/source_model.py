"""Stage source_model: the source classifier.

Trained on the source train split (timm ``source_model.arch``; embedded, folder), or loaded from the
weights the domain names (:class:`sda.domains.PretrainedClassifier`: imagenet's
``imagenet.classifier_weights``, evaluated the reference way, resize 256 bicubic, centre crop 224,
ImageNet mean / std; folder's ``folder.classifier_weights``). Writes ``data/source_model/``
(``model.safetensors`` + ``config.json`` with preprocessing and log), ``metrics/source_model.json`` and
``metrics/training/source_model.csv`` (per epoch: loss, train and clean val accuracy).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sda.config import Params, SourceModel
from sda.domains import Domain, PretrainedClassifier, domain_for
from sda.io.shards import load_shards, read_manifest
from sda.runtime import derive_seed
from sda.layout import OUTS
from tasks.common import stage_main, write_training_metrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger("sda.source_model")

# A classifier trained here sees images in [-1, 1].
EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.5, 0.5, 0.5)


def run(cfg: SourceModel, seed: int, source_dir: Path, out: Path, device: torch.device) -> dict:
    import torch

    from sda.models.classifiers import create_classifier, predict_logits, save_classifier, train_classifier

    train, val = load_shards(source_dir / "train"), load_shards(source_dir / "val")
    num_classes = int(max(train.labels.max(), val.labels.max())) + 1
    s = derive_seed(seed, "source_model")
    torch.manual_seed(s)
    kwargs = {"width": cfg.width} if cfg.arch == "sda_cnn3" else {}
    model = create_classifier(cfg.arch, num_classes, **kwargs)

    def val_accuracy(m: torch.nn.Module) -> float:  # % of the clean val split; draws no random numbers
        return float((predict_logits(m, val.images, mean=EMBEDDED_MEAN, std=EMBEDDED_STD, device=device)
                      .argmax(1).numpy() == val.labels).mean() * 100)

    history = train_classifier(model, train.images, train.labels, mean=EMBEDDED_MEAN, std=EMBEDDED_STD,
                               epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing, seed=s, device=device,
                               desc="source_model", validate=val_accuracy, keep_best=False)
    val_acc = history[-1]["val"]
    log.info("source model: train acc %.1f%%, clean val acc %.1f%%", 100 * history[-1]["acc"], val_acc)
    config = {"arch": cfg.arch, "num_classes": num_classes, "kwargs": kwargs, "mean": list(EMBEDDED_MEAN),
              "std": list(EMBEDDED_STD), "val_acc": val_acc, "history": history, "seed": s}
    save_classifier(model, out, config)
    return config


def run_pretrained(arch: str, pre: PretrainedClassifier, out: Path) -> dict:
    """timm ``arch`` with the weights ``pre.weights`` (class count from its head), no training."""
    from sda.models.classifiers import load_pretrained_classifier, save_classifier

    model, num_classes = load_pretrained_classifier(arch, pre.weights)
    config = {"arch": arch, "num_classes": num_classes, "kwargs": {}, "mean": list(pre.mean), "std": list(pre.std),
              "resize": pre.resize, "crop": pre.crop, "weights": str(pre.weights)}
    log.info("source model: timm %s from %s (%d classes), input resize %s -> crop %s", arch, pre.weights,
             num_classes, pre.resize, pre.crop)
    save_classifier(model, out, config)
    return config


def write_metrics(config: dict) -> None:
    """metrics/source_model.json (the last epoch, the clean val accuracy) and its per-epoch curve; a
    pretrained model (no training here) writes ``epochs: 0`` and an empty curve."""
    history = config.get("history", [])
    summary = {"epochs": len(history)}
    if history:
        summary.update(train_loss=history[-1]["loss"], train_acc=100 * history[-1]["acc"], val_acc=config["val_acc"])
    write_training_metrics("source_model", summary, ["epoch", "loss", "acc", "val_acc"],
                           [{"epoch": h["epoch"], "loss": h["loss"], "acc": 100 * h["acc"], "val_acc": h["val"]}
                            for h in history])


def _main(params: Params, args: argparse.Namespace, domain: Domain) -> int | None:
    pretrained = domain.source_classifier(params)
    if pretrained is not None:
        write_metrics(run_pretrained(params.source_model.arch, pretrained, OUTS["source_model"]))
        return None
    write_metrics(run(params.source_model, params.runtime.seed, OUTS["source_data"], OUTS["source_model"], args.device))
    return read_manifest(OUTS["source_data"] / "train")["count"] * params.source_model.epochs  # images trained on


if __name__ == "__main__":
    stage_main("source_model", __doc__, _main, domain_for=domain_for)
