"""Stage classifier_align: fine-tune the source classifier on the aligned synthetic set.

Writes ``data/classifier_align/`` (same format as ``data/source_model/``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from sda.classifiers import input_spec, load_classifier, paper_recipe, save_classifier, train_classifier
from sda.params import ClassifierAlign, Params
from sda.runtime import derive_seed
from sda.shards import load_shards
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.classifier_align")


def run(cfg: ClassifierAlign, seed: int, source_model: Path, synth_dir: Path, out: Path, device: torch.device) -> dict:
    model, config = load_classifier(source_model, device)
    synth = load_shards(synth_dir)
    s = derive_seed(seed, "classifier_align")
    torch.manual_seed(s)
    hp = cfg.model_dump(include={"optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "grad_clip"})
    if cfg.recipe == "paper":
        hp = paper_recipe(config["arch"])
        log.info("paper recipe for %s: %s", config["arch"], hp)
    history = train_classifier(model, synth.images, synth.labels, **input_spec(config), seed=s, device=device,
                               label_smoothing=cfg.label_smoothing, desc="classifier_align", **hp)
    log.info("aligned model: train acc on aligned synthetic set %.1f%%", 100 * history[-1]["acc"])
    new_config = {**config, "aligned_on": str(synth_dir), "hyperparameters": hp, "history": history, "seed": s,
                  "trained_images": len(synth.labels) * hp["epochs"]}
    new_config.pop("val_acc", None)
    save_classifier(model, out, new_config)
    return new_config


def _main(params: Params, args: argparse.Namespace) -> int:
    config = run(params.classifier_align, params.runtime.seed, DATA / "source_model", DATA / "synth_align",
        DATA / "classifier_align", args.device)
    return config["trained_images"]


if __name__ == "__main__":
    stage_main("classifier_align", __doc__, _main)
