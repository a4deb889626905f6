"""Stage classifier_align: fine-tune the source classifier on the aligned synthetic set, streamed
from its shards (seeded shard + buffer shuffles, ``runtime.loader_workers`` reading processes).

Writes ``data/classifier_align/`` (same format as ``data/source_model/``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from sda.config import ClassifierAlign, Params
from sda.io.streaming import ShardStream
from sda.models.classifiers import fit_classifier, input_spec, load_classifier, paper_recipe, save_classifier
from sda.runtime import derive_seed
from tasks.common import DATA, stage_main

log = logging.getLogger("sda.classifier_align")


def run(cfg: ClassifierAlign, seed: int, source_model: Path, synth_dir: Path, out: Path, device: torch.device,
        loader_workers: int = 0) -> dict:
    """Fine-tune the source model on the shard set ``synth_dir``, streamed (seeded shard + buffer
    shuffles, ``loader_workers`` reading processes): memory is bounded by batch and buffer."""
    model, config = load_classifier(source_model, device)
    s = derive_seed(seed, "classifier_align")
    torch.manual_seed(s)
    hp = cfg.model_dump(include={"optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "grad_clip"})
    if cfg.recipe == "paper":
        hp = paper_recipe(config["arch"])
        log.info("paper recipe for %s: %s", config["arch"], hp)
    epochs = [ShardStream(synth_dir, hp["batch_size"], workers=loader_workers, seed=s, epoch=e,
                          shuffle_buffer=cfg.shuffle_buffer) for e in range(hp["epochs"])]
    train_hp = {k: v for k, v in hp.items() if k not in ("batch_size", "epochs")}
    history = fit_classifier(model, lambda e: ((b.images, b.labels) for b in epochs[e]), [len(e) for e in epochs],
                             **input_spec(config), device=device, label_smoothing=cfg.label_smoothing,
                             desc="classifier_align", **train_hp)
    log.info("aligned model: train acc on aligned synthetic set %.1f%%", 100 * history[-1]["acc"])
    new_config = {**config, "aligned_on": str(synth_dir), "hyperparameters": hp, "history": history, "seed": s,
                  "trained_images": epochs[0].count * hp["epochs"]}
    new_config.pop("val_acc", None)
    save_classifier(model, out, new_config)
    return new_config


def _main(params: Params, args: argparse.Namespace) -> int:
    config = run(params.classifier_align, params.runtime.seed, DATA / "source_model", DATA / "synth_align",
                 DATA / "classifier_align", args.device, loader_workers=params.runtime.loader_workers)
    return config["trained_images"]


if __name__ == "__main__":
    stage_main("classifier_align", __doc__, _main)
