"""Stage classifier_align: fine-tune the source classifier on the aligned synthetic set, streamed
from its shards (seeded shard + buffer shuffles, ``runtime.loader_workers`` reading processes).

Before and while it trains, it measures whether the synthetic domain deserves trust, with no target
label (:mod:`sda.method.diagnostics`): the source model's accuracy on ``synth_generate``'s and
``synth_align``'s images against their intended classes, and, where the source has a val split,
the source and the aligned model on its DDA projections. With ``classifier_align.select_epoch`` the
epoch best there is kept (else the last, the paper), and with ``classifier_align.fallback`` an aligned
model worse than the source model there by more than ``max_val_drop`` points is not used: the saved
"aligned" model is then the source model, marked ``fallback: dda``, and SDA's prediction is DDA's.

Writes ``data/classifier_align/`` (same format as ``data/source_model/``),
``metrics/alignment.json`` (the measurements and their warnings, a DVC metric),
``metrics/classifier_align.json`` + ``metrics/training/classifier_align.csv`` (the training's summary
and per-epoch curve) and ``metrics/synthetic_grid.png`` (the synthetic images per class, and after
``synth_align``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from sda.config import ClassifierAlign, Params, Projection
from sda.domains import Domain, domain_for
from sda.io.atomic import atomic_write_bytes, atomic_write_json
from sda.io.shards import MANIFEST, iter_shard_file, read_manifest
from sda.runtime import derive_seed
from sda.layout import METRICS, METRIC_FILES, OUTS, SourceClasses, projector_dir
from tasks.common import stage_main, write_training_metrics

if TYPE_CHECKING:
    import torch

    from sda.io.streaming import ShardStream
    from sda.models.classifiers import Classifier

log = logging.getLogger("sda.classifier_align")


def project_shard_set(src: Path, model_dir: Path, projection: Projection, seed: int,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DDA projections of the (small) shard set ``src``, in memory, by ``target_project``'s code
    path: originals and projections uint8 (N, H, W, 3), labels (N,)."""
    from sda.method.projector import project_job, projection_jobs

    originals, projected = [], []
    for job in projection_jobs(src, [""]):
        originals += list(iter_shard_file(src / job.name))
        projected += list(project_job(job, model_dir=str(model_dir), src_root=str(src), projection=projection,
                                      seed=seed, device=str(device)))
    return (np.stack([s.image for s in originals]), np.stack([s.image for s in projected]),
            np.array([s.label for s in projected], dtype=np.int64))


def mixed_batches(stream: ShardStream, images: np.ndarray, labels: np.ndarray, batch_size: int,
                  seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch: the batches of ``stream`` and batches of the in-memory set (``images`` uint8
    (N, H, W, 3), ``labels`` (N,)), the latter shuffled and interleaved with the former in an order
    drawn from ``seed`` alone."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    extra = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    turns = rng.permutation(np.r_[np.zeros(len(stream), bool), np.ones(len(extra), bool)])
    batches, pending = iter(stream), iter(extra)
    for from_memory in turns:
        if from_memory:
            idx = next(pending)
            yield images[idx], labels[idx]
        else:
            b = next(batches)
            yield b.images, b.labels


def run(cfg: ClassifierAlign, seed: int, source_model: Path, synth_dir: Path, out: Path, device: torch.device,
        loader_workers: int = 0, projected_val: tuple[np.ndarray, np.ndarray] | None = None,
        projected_source: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Fine-tune the source model on the shard set ``synth_dir``, streamed (seeded shard + buffer
    shuffles, ``loader_workers`` reading processes): memory is bounded by batch and buffer.

    ``projected_val``: (projections uint8 (N, H, W, 3), labels (N,)) of the source val split. With
    it and ``cfg.select_epoch`` the epoch with the best accuracy there is kept (else the last), and
    with ``cfg.fallback``, when the kept one is more than ``cfg.max_val_drop`` points below the
    source model's, the source model is saved instead, with ``fallback: "dda"`` in its config. Returns the saved config, plus ``val_source`` /
    ``val_aligned`` (percent, the aligned model before any fallback) when ``projected_val`` is given.
    ``projected_source``: (projections, labels) of the source train split, trained on beside the
    synthetic set in every epoch (:func:`mixed_batches`; ``classifier_align.projected_source``).
    """
    import torch

    from sda.io.streaming import ShardStream
    from sda.method.diagnostics import projected_val_accuracy
    from sda.models.classifiers import Classifier, fit_classifier, input_spec, load_classifier, paper_recipe, save_classifier

    source = load_classifier(source_model, device)
    model, config = source.module, source.config  # the module is fine-tuned in place
    s = derive_seed(seed, "classifier_align")
    torch.manual_seed(s)
    hp = cfg.model_dump(include={"optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "grad_clip"})
    if cfg.recipe == "paper":
        hp = paper_recipe(config["arch"])
        log.info("paper recipe for %s: %s", config["arch"], hp)
    val_score = None
    if projected_val is not None:
        val_score = lambda m: projected_val_accuracy(Classifier(m, config), *projected_val, device=device)  # noqa: E731
        source_val = val_score(model)
    epochs = [ShardStream(synth_dir, hp["batch_size"], workers=loader_workers, seed=s, epoch=e,
                          shuffle_buffer=cfg.shuffle_buffer) for e in range(hp["epochs"])]
    train_hp = {k: v for k, v in hp.items() if k not in ("batch_size", "epochs")}
    if projected_source is None:
        batches, lengths = (lambda e: ((b.images, b.labels) for b in epochs[e])), [len(e) for e in epochs]
    else:
        extra = -(-len(projected_source[1]) // hp["batch_size"])
        batches = lambda e: mixed_batches(epochs[e], *projected_source, hp["batch_size"],  # noqa: E731
                                          derive_seed(s, "projected source", e))
        lengths = [len(e) + extra for e in epochs]
    history = fit_classifier(model, batches, lengths,
                             **input_spec(config), device=device, label_smoothing=cfg.label_smoothing,
                             desc="classifier_align", validate=val_score, keep_best=cfg.select_epoch, **train_hp)
    log.info("aligned model: train acc on aligned synthetic set %.1f%%", 100 * history[-1]["acc"])
    new_config = {**config, "aligned_on": str(synth_dir), "hyperparameters": hp, "history": history, "seed": s,
                  "trained_images": (epochs[0].count + (0 if projected_source is None else len(projected_source[1])))
                  * hp["epochs"]}
    new_config.pop("val_acc", None)
    scores = {}
    if val_score is not None:
        aligned_val = val_score(model)
        scores = {"val_source": round(source_val, 2), "val_aligned": round(aligned_val, 2)}
        log.info("projected source val split: source model %.1f%%, aligned model %.1f%%", source_val, aligned_val)
    if cfg.select_epoch and val_score is not None:
        best = max(range(len(history)), key=lambda i: (history[i]["val"], i))
        new_config["selected_epoch"] = history[best]["epoch"]
        log.info("kept epoch %d of %d (best on the projected source val split)", new_config["selected_epoch"],
                 len(history))
    if cfg.fallback and val_score is not None and aligned_val < source_val - cfg.max_val_drop:
        log.warning("the aligned model is %.1f points worse than the source model on the projected source val "
                    "split (allowed: %g): saving the source model, SDA falls back to DDA",
                    source_val - aligned_val, cfg.max_val_drop)
        model = load_classifier(source_model, device).module
        new_config["fallback"] = "dda"
    save_classifier(model, out, new_config)
    return {**new_config, **scores}


def synthetic_scores(model: Classifier, sets: dict[str, Path], class_names: list[str],
                     batch_size: int, device: torch.device, loader_workers: int = 0) -> dict[str, dict]:
    """The source model's accuracy on each synthetic shard set against its intended classes (CAS)."""
    from sda.io.streaming import ShardStream
    from sda.method.diagnostics import class_accuracy

    out = {}
    for stage, path in sets.items():
        out[stage] = class_accuracy(model, ShardStream(path, batch_size, workers=loader_workers), class_names,
                                    batch_size=batch_size, device=device)
        log.info("%s: the source model recognises %.1f%% of %d synthetic images as their intended class", stage,
                 out[stage]["accuracy"], out[stage]["images"])
    return out


def suggested_settings(params: Params, domain: Domain) -> dict[str, str]:
    """The settings that :func:`sda.method.diagnostics.alignment_warnings` names, with their values."""
    df, p, ca, sg = params.diffusion_finetune, params.projection, params.classifier_align, params.synth_generate
    pretrained = domain.pretrained_diffusion(params)
    if pretrained is not None:
        section = pretrained.section
        projector = f"{section}.finetune_steps (now {getattr(params, section).finetune_steps})"
        generator = f"{projector} or synth_generate.steps (now {sg.steps})"
    else:
        projector = (f"diffusion_finetune.max_train_steps (now {df.max_train_steps})" if df.probe_every else
                     f"diffusion_finetune.train_steps (now {df.train_steps})")
        generator = f"{projector} or synth_generate.per_class (now {sg.per_class})"
    return {"generator": generator, "projector": projector,
            "projection": f"projection.N (now {p.N}; lower keeps more of each image) or projection.scale (now {p.scale:g})",
            "alignment": f"classifier_align.lr (now {ca.lr:g}) or classifier_align.epochs (now {ca.epochs})"}


def _main(params: Params, args: argparse.Namespace, domain: Domain) -> int:
    from sda.method.diagnostics import alignment_warnings, projected_val_accuracy
    from sda.method.scoring import fell_back
    from sda.models.classifiers import load_classifier
    from sda.models.diffusion import DiffusionInfo

    cfg, rt = params.classifier_align, params.runtime
    val_dir, model_dir = OUTS["source_data"] / "val", projector_dir(params.projection.method)
    has_val = (val_dir / MANIFEST).is_file() and read_manifest(val_dir)["count"] > 0
    if cfg.select_epoch and not has_val:
        raise ValueError(f"classifier_align.select_epoch needs the source val split {val_dir}, which this profile "
                         f"({params.profile}) does not write: set classifier_align.select_epoch: false")
    class_names = SourceClasses.in_folder(OUTS["source_data"]).names
    source = load_classifier(OUTS["source_model"], args.device)  # the judge; run() fine-tunes its own copy
    probe = DiffusionInfo.read(OUTS["diffusion_finetune"]).probe  # diffusion_finetune's scores of its own samples, if it probed
    diagnostics: dict = {"diffusion_probe": probe and {k: probe[k] for k in (
        "accuracy", "images", "selected_step", "trained_steps", "target", "reached_target", "history")},
        "synthetic": synthetic_scores(
        source, {"synth_generate": OUTS["synth_generate"], "synth_align": OUTS["synth_align"]},
        class_names, params.evaluate.batch_size, args.device, rt.loader_workers)}
    projected_val, original_val = None, None
    if has_val:
        originals, projected, labels = project_shard_set(val_dir, model_dir, params.projection,
                                                         derive_seed(rt.seed, "classifier_align", "val"), args.device)
        projected_val = (projected, labels)
        original_val = projected_val_accuracy(source, originals, labels, device=args.device)
    projected_source = None
    if cfg.projected_source:
        train_dir = OUTS["source_data"] / "train"
        _, images, labels = project_shard_set(train_dir, model_dir, params.projection,
                                              derive_seed(rt.seed, "classifier_align", "train"), args.device)
        projected_source = (images, labels)
        log.info("classifier_align.projected_source: %d projected source train images join the synthetic set",
                 len(labels))
    config = run(cfg, rt.seed, OUTS["source_model"], OUTS["synth_align"], OUTS["classifier_align"], args.device,
                 loader_workers=rt.loader_workers, projected_val=projected_val, projected_source=projected_source)
    diagnostics["projected_val"] = None if projected_val is None else {
        "images": len(projected_val[1]), "source_original": round(original_val, 2), "source": config["val_source"],
        "aligned": config["val_aligned"],
        "per_epoch": [round(h["val"], 2) for h in config["history"] if "val" in h] or None,
        "selected_epoch": config.get("selected_epoch")}
    diagnostics["fallback"] = fell_back(config)
    diagnostics["thresholds"] = {"min_synthetic_accuracy": cfg.min_synthetic_accuracy, "max_val_drop": cfg.max_val_drop,
                                 "select_epoch": cfg.select_epoch, "fallback": cfg.fallback,
                                 "projected_source": cfg.projected_source}
    diagnostics["warnings"] = alignment_warnings(diagnostics, min_synthetic_accuracy=cfg.min_synthetic_accuracy,
                                                 max_val_drop=cfg.max_val_drop,
                                                 settings=suggested_settings(params, domain))
    for w in diagnostics["warnings"]:
        log.warning("%s", w)
    METRICS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(METRIC_FILES["alignment"], diagnostics)
    write_synthetic_grid(diagnostics["synthetic"]["synth_generate"]["per_class"], class_names)
    write_metrics(config)
    return config["trained_images"]


def write_synthetic_grid(per_class: dict[str, float], class_names: list[str], k: int = 10, per_row: int = 8) -> None:
    """metrics/synthetic_grid.png: what the generator drew, per class (all classes up to ``k``, else the ``k``
    the source model recognises least), above the same images after synth_align's projection."""
    from sda.method.diagnostics import synthetic_samples, weakest_classes
    from sda.method.report import synthetic_grid_png

    classes = weakest_classes(per_class, class_names, k)
    samples = synthetic_samples(OUTS["synth_generate"], OUTS["synth_align"], classes, per_row)
    rows = {f"{class_names[c]} ({per_class[class_names[c]]:.0f}%)": pair for c, pair in samples.items()}
    size = next(iter(samples.values()))[0].shape[1] if samples else 16
    atomic_write_bytes(METRIC_FILES["synthetic_grid"], synthetic_grid_png(rows, size))


def write_metrics(config: dict) -> None:
    """metrics/classifier_align.json and the per-epoch curve: the loss and accuracy on the training stream
    (the aligned synthetic set, with the projected source images when they join it) and, where the
    source has a val split, the accuracy on its projections (real images, labels known, never trained
    on: the held-out set), with the source model's there for reference and whether SDA fell back."""
    from sda.method.scoring import fell_back

    history = config["history"]
    summary = {"epochs": len(history), "train_loss": history[-1]["loss"], "train_acc": 100 * history[-1]["acc"]}
    if "val_aligned" in config:
        summary.update(val_projected_aligned=config["val_aligned"], val_projected_source=config["val_source"],
                       fallback=int(fell_back(config)))
    # the val column even without a val split (empty cells): the accuracy plot asks for it
    columns = ["epoch", "loss", "acc", "val_projected"]
    write_training_metrics("classifier_align", summary, columns,
                           [{"epoch": h["epoch"], "loss": h["loss"], "acc": 100 * h["acc"],
                             **({"val_projected": h["val"]} if "val" in h else {})} for h in history])


if __name__ == "__main__":
    stage_main("classifier_align", __doc__, _main, domain_for=domain_for)
