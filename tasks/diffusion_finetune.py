"""Stage diffusion_finetune: the diffusion models, fitted to the source domain.

The domain (``profile``, :mod:`sda.domains`) says which. ``unet`` (embedded, folder): one
class-conditional UNet (with a "null" class, so it is also the unconditional projector) trained from
scratch with EMA on the source train split, at its image size. ``adm+dit`` (imagenet): the
unconditional ADM projector from ``imagenet.adm_checkpoint`` (a guided-diffusion state dict,
converted exactly, or a converted folder) and the DiT-XL/2 generator from ``imagenet.dit``; used as
they are when ``imagenet.finetune_steps`` is 0 (the paper), fine-tuned on the source train images
otherwise. ``adm+dit`` (folder, with ``folder.adm_checkpoint`` and ``folder.dit``): the same two
pretrained models, always fine-tuned on the folder's images, the DiT with a new class table.

Writes ``data/diffusion_finetune/``: ``unet/`` + ``scheduler/`` (the projector, ``save_pretrained``),
``dit/`` (``transformer/`` + ``vae/``, when a DiT generates) and ``info.json`` (classes, null label, losses);
``metrics/diffusion_finetune.json`` + ``metrics/training/diffusion_finetune.csv`` (the loss curve).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from sda.config import DiffusionFinetune, Params
from sda.domains import Domain, PretrainedDiffusion, domain_for
from sda.io.shards import load_shards, read_manifest
from sda.runtime import derive_seed
from sda.layout import OUTS, SourceClasses
from tasks.common import stage_main, write_training_metrics

if TYPE_CHECKING:
    import torch

    from sda.domains.folder import Folder
    from sda.domains.imagenet import ImageNet
    from sda.models.diffusion import DiffusionInfo

log = logging.getLogger("sda.diffusion_finetune")

# samples shuffled at a time when fine-tuning on the ImageNet source images (bounds memory, not data size)
FINETUNE_SHUFFLE_BUFFER = 1000


class Probe:
    """The ``on_checkpoint`` callback of :func:`sda.models.training.train_epsilon` that scores each
    checkpoint's samples with the source model (:func:`sda.method.diagnostics.probe_score`), keeps the
    best-scoring weights (ties: the later one) and says when to stop: at ``train_steps`` or any probe
    after it, once the best score reaches ``cfg.probe_target`` or ``cfg.max_minutes`` have passed."""

    def __init__(self, cfg: DiffusionFinetune, sample: Callable, judge_dir: Path, class_names: list[str], seed: int,
                 device: torch.device):
        from sda.models.classifiers import load_classifier

        self.cfg, self.sample, self.class_names, self.seed, self.device = cfg, sample, class_names, seed, device
        self.judge = load_classifier(judge_dir, device)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.started = time.monotonic()
        self.timed_out = False

    def __call__(self, step: int, model: torch.nn.Module) -> bool:
        from sda.method.diagnostics import probe_score

        score = probe_score(lambda y, s: self.sample(model, y, s), self.judge,
                            range(len(self.class_names)), self.class_names, per_class=self.cfg.probe_per_class,
                            seed=self.seed, device=self.device)
        self.history.append({"step": step, "accuracy": score["accuracy"]})
        if self.best is None or score["accuracy"] >= self.best["accuracy"]:
            self.best = {"step": step, **score}
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.info("probe at step %d: the source model recognises %.1f%% of %d samples (best %.1f%%, step %d)", step,
                 score["accuracy"], score["images"], self.best["accuracy"], self.best["step"])
        if step < self.cfg.train_steps:
            return False
        if self.best["accuracy"] >= self.cfg.probe_target:
            return True
        if self.cfg.max_minutes is not None and time.monotonic() - self.started > 60 * self.cfg.max_minutes:
            self.timed_out = True
            log.warning("diffusion_finetune.max_minutes (%g) spent at step %d: stopping (the model now depends on "
                        "this machine's speed)", self.cfg.max_minutes, step)
            return True
        return False

    def record(self, trained_steps: int) -> dict:
        """What ``info.json`` keeps: the settings, the scores per probe and the checkpoint kept."""
        c = self.cfg
        return {"every": c.probe_every, "per_class": c.probe_per_class, "target": c.probe_target,
                "max_train_steps": c.max_train_steps, "history": self.history, "selected_step": self.best["step"],
                "accuracy": self.best["accuracy"], "per_class_accuracy": self.best["per_class"],
                "images": self.best["images"], "reached_target": self.best["accuracy"] >= c.probe_target,
                "timed_out": self.timed_out, "trained_steps": trained_steps}


def run(cfg: DiffusionFinetune, seed: int, source_dir: Path, out: Path, device: torch.device, *,
        judge_dir: Path | None = None, sample_steps: int = 25, guidance_scale: float = 1.0) -> DiffusionInfo:
    """Train the class-conditional UNet (with its null class) on ``source_dir/train``.

    With ``cfg.probe_every`` the source classifier in ``judge_dir`` scores samples of the model (the
    generator as ``synth_generate`` runs it: ``sample_steps``, ``guidance_scale``) every
    ``probe_every`` steps; the best checkpoint is saved, and training goes past ``train_steps`` up to
    ``max_train_steps`` while the score is below ``probe_target`` (:class:`Probe`).
    """
    import torch

    from sda.method.sampling import sample_class_conditional
    from sda.models.diffusion import DiffusionInfo, build_unet, save_diffusion
    from sda.models.schedulers import ddpm_scheduler
    from sda.models.training import random_batches, train_epsilon

    train = load_shards(source_dir / "train")
    num_classes = int(train.labels.max()) + 1
    s = derive_seed(seed, "diffusion_finetune")
    torch.manual_seed(s)
    unet = build_unet(train.images.shape[1], num_classes, cfg.block_out_channels, cfg.layers_per_block,
                      cfg.attention_levels, cfg.norm_num_groups)
    n_params = sum(p.numel() for p in unet.parameters())
    probing = cfg.probe_every > 0
    steps = (cfg.max_train_steps or cfg.train_steps) if probing else cfg.train_steps
    log.info("UNet2DModel: %.2fM parameters, %d steps of batch %d%s", n_params / 1e6, cfg.train_steps, cfg.batch_size,
             f" (up to {steps} while the probe is under {cfg.probe_target:g}%)" if steps > cfg.train_steps else "")
    scheduler = ddpm_scheduler(num_train_timesteps=cfg.num_train_timesteps)
    probe = None
    if probing:
        if judge_dir is None:
            raise ValueError("diffusion_finetune.probe_every needs the source model: set it to 0 or run source_model")
        class_names = SourceClasses.in_folder(source_dir).names
        probe = Probe(cfg, lambda m, y, sd: sample_class_conditional(
            m, scheduler, y, sd, null_label=num_classes, steps=sample_steps, guidance_scale=guidance_scale,
            device=device), judge_dir, class_names, derive_seed(seed, "diffusion_finetune", "probe"), device)
    gen = torch.Generator().manual_seed(s)  # batches, class dropout, timesteps and noise: one stream
    losses = train_epsilon(unet, scheduler, random_batches(train.images, train.labels, cfg.batch_size, gen, device),
                           steps=steps, lr=cfg.lr, seed=s, generator=gen, null_label=num_classes,
                           null_label_prob=cfg.null_label_prob, warmup_steps=max(1, cfg.train_steps // 20),
                           lr_schedule=cfg.lr_schedule,
                           ema_decay=cfg.ema_decay, device=device, desc="diffusion",
                           checkpoint_every=cfg.probe_every, on_checkpoint=probe)
    tail = float(np.mean(losses[-100:]))
    log.info("final loss (mean of last 100 steps): %.4f", tail)
    curve = [round(float(np.mean(losses[i: i + 50])), 5) for i in range(0, len(losses), 50)]
    info = DiffusionInfo(num_classes=num_classes, null_label=num_classes, parameters=n_params, final_loss=tail,
                         loss_every_50_steps=curve, seed=s, trained_steps=len(losses))
    if probe is not None:
        info.probe = probe.record(len(losses))
        if probe.best["step"] != len(losses):
            unet.load_state_dict(probe.best_state)
        log.info("kept the checkpoint of step %d of %d: the source model recognises %.1f%% of its probe samples",
                 probe.best["step"], len(losses), probe.best["accuracy"])
        if not info.probe["reached_target"]:
            log.warning("diffusion_finetune: after %d steps the source model recognises only %.1f%% of the "
                        "diffusion model's samples as their class (probe_target %g%%): the synthetic domain will be "
                        "weak. Raise diffusion_finetune.max_train_steps (now %s) or diffusion_finetune.train_steps",
                        len(losses), probe.best["accuracy"], cfg.probe_target, cfg.max_train_steps)
    save_diffusion(out, unet, scheduler, info)
    return info


def _finetune(adm: torch.nn.Module, transformer: torch.nn.Module, vae: torch.nn.Module, train_dir: Path, *,
              steps: int, lr: float, batch_size: int, seed: int, device: torch.device, loader_workers: int,
              dit_size: int | None = None) -> dict[str, list[float]]:
    """Fine-tune the ADM projector (unconditional, at the images' size) and the DiT generator (on
    their VAE latents, the images first resized to ``dit_size`` when given) on ``train_dir``, each
    for ``steps`` steps, streamed (:func:`sda.io.streaming.endless_batches`); their losses."""
    import torch.nn.functional as F

    from sda.io.streaming import endless_batches
    from sda.models.schedulers import ddpm_scheduler
    from sda.models.training import train_epsilon

    sched = ddpm_scheduler(learn_sigma=adm.config.out_channels == 6)
    stream = dict(seed=seed, workers=loader_workers, shuffle_buffer=FINETUNE_SHUFFLE_BUFFER)
    kw = dict(steps=steps, lr=lr, device=device)
    adm_losses = train_epsilon(adm, sched, endless_batches(train_dir, batch_size, labels=False, **stream), seed=seed,
                               desc="finetune ADM", **kw)
    sf = vae.config.scaling_factor

    def encode(x: torch.Tensor) -> torch.Tensor:
        if dit_size is not None and x.shape[-1] != dit_size:
            x = F.interpolate(x, size=(dit_size, dit_size), mode="bicubic", align_corners=False).clamp(-1, 1)
        return vae.encode(x).latent_dist.sample() * sf

    dit_losses = train_epsilon(transformer, ddpm_scheduler(learn_sigma=True, clip_sample=False),
                               endless_batches(train_dir, batch_size, **stream), seed=seed + 1, encode=encode,
                               desc="finetune DiT", **kw)
    return {"adm": [round(v, 5) for v in adm_losses], "dit": [round(v, 5) for v in dit_losses]}


def _log_sizes(adm: torch.nn.Module, transformer: torch.nn.Module) -> None:
    log.info("projector ADM %.1fM parameters, generator DiT %.1fM parameters",
             sum(p.numel() for p in adm.parameters()) / 1e6, sum(p.numel() for p in transformer.parameters()) / 1e6)


def run_pretrained(pre: PretrainedDiffusion, cfg: ImageNet | Folder, seed: int, source_dir: Path, out: Path,
                   device: torch.device, loader_workers: int = 0) -> DiffusionInfo:
    """The ADM projector and DiT generator that the domain names (``pre``; ``cfg``: its params section
    ``pre.section``), fine-tuned on the source train images for ``cfg.finetune_steps`` (0: saved as they
    are). With ``pre.image_size`` the ADM (convolutional) works at that size and the DiT at its own, on
    the images resized up to it (``synth_generate`` brings its samples back: ``info.output_size``);
    with ``pre.new_class_table`` the DiT gets a new class table for the source's classes
    (:func:`sda.models.dit.new_class_table`), else it draws ``classes.json``'s ``selected`` ImageNet
    classes with its own. The train images are streamed, never loaded whole."""
    from sda.models.adm import load_projector
    from sda.models.diffusion import DiffusionInfo, save_diffusion
    from sda.models.dit import dit_image_size, load_dit, new_class_table
    from sda.models.schedulers import ddpm_scheduler

    classes = SourceClasses.in_folder(source_dir)
    adm = load_projector(cfg.adm_checkpoint, cfg.adm_flags, key=f"{pre.section}.adm_checkpoint")
    if pre.image_size is not None:
        factor = 2 ** (len(adm.config.block_out_channels) - 1)
        if pre.image_size % factor:
            raise ValueError(f"{pre.section}.image_size={pre.image_size} is not a multiple of {factor}, which the "
                             f"ADM of {pre.section}.adm_checkpoint ({len(adm.config.block_out_channels)} levels) needs")
        adm.register_to_config(sample_size=pre.image_size)  # what it is fine-tuned and used at
    adm = adm.to(device).eval()
    transformer, vae = load_dit(cfg.dit, device, key=f"{pre.section}.dit")
    if pre.new_class_table:
        new_class_table(transformer, len(classes.names))
    dit_size = dit_image_size(transformer, vae) if pre.image_size is not None else None
    # info.json holds what applies: the ImageNet classes drawn, or the size the samples are brought to
    which = {"output_size": pre.image_size} if pre.image_size is not None else {}
    if not pre.new_class_table:
        which["classes"] = classes.selected
    info = DiffusionInfo(profile=pre.section, num_classes=len(classes.names), null_label=None, generator="dit",
                         adm_checkpoint=cfg.adm_checkpoint, dit=cfg.dit, finetune_steps=cfg.finetune_steps,
                         seed=derive_seed(seed, "diffusion_finetune"), **which)
    if cfg.finetune_steps > 0:
        train_dir = source_dir / "train"
        table = f"a new table of {len(classes.names)} classes" if pre.new_class_table else "its ImageNet classes"
        log.info("fine-tuning ADM (at %s px) and DiT (%s, at %s px) for %d steps of batch %d on %d source images",
                 adm.config.sample_size, table, dit_size or adm.config.sample_size, cfg.finetune_steps,
                 cfg.finetune_batch_size, read_manifest(train_dir)["count"])
        info.losses = _finetune(adm, transformer, vae, train_dir, steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                                batch_size=cfg.finetune_batch_size, seed=info.seed, device=device,
                                loader_workers=loader_workers, dit_size=dit_size)
    save_diffusion(out, adm, ddpm_scheduler(learn_sigma=adm.config.out_channels == 6), info, dit=(transformer, vae))
    _log_sizes(adm, transformer)
    return info


def write_metrics(info: DiffusionInfo) -> None:
    """metrics/diffusion_finetune.json (steps trained, the final loss, the probe's score) and the loss curve,
    the mean of every 50 steps: ``loss`` the UNet's (trained here) or the ADM projector's, ``generator_loss``
    the DiT's (pretrained models fine-tuned); pretrained models used as they are: ``steps: 0``, no curve."""
    if info.losses:  # pretrained, fine-tuned: the per-step losses of both models
        per_step = {"loss": info.losses["adm"], "generator_loss": info.losses["dit"]}
        means = {k: [float(np.mean(v[i: i + 50])) for i in range(0, len(v), 50)] for k, v in per_step.items()}
        steps, final = len(info.losses["adm"]), {k: float(np.mean(v[-100:])) for k, v in per_step.items()}
    elif info.loss_every_50_steps:  # trained here: info.json keeps the 50-step means
        means, steps = {"loss": info.loss_every_50_steps}, info.trained_steps
        final = {"loss": info.final_loss}
    else:
        means, steps, final = {}, 0, {}
    rows = [{"step": min(50 * (i + 1), steps), **{k: v[i] for k, v in means.items()}}
            for i in range(len(means.get("loss", [])))]
    summary: dict = {"steps": steps, **{f"final_{k}": v for k, v in final.items()}}
    if info.probe:
        summary["probe_accuracy"] = float(info.probe["accuracy"])
    write_training_metrics("diffusion_finetune", summary, ["step", *means], rows)


def _main(params: Params, args: argparse.Namespace, domain: Domain) -> int | None:
    pretrained = domain.pretrained_diffusion(params)
    if pretrained is not None:
        cfg = getattr(params, pretrained.section)
        write_metrics(run_pretrained(pretrained, cfg, params.runtime.seed, OUTS["source_data"],
                                     OUTS["diffusion_finetune"], args.device, params.runtime.loader_workers))
        return cfg.finetune_steps * cfg.finetune_batch_size or None
    cfg, sg = params.diffusion_finetune, params.synth_generate
    info = run(cfg, params.runtime.seed, OUTS["source_data"], OUTS["diffusion_finetune"], args.device,
               judge_dir=OUTS["source_model"], sample_steps=sg.steps, guidance_scale=sg.guidance_scale)
    write_metrics(info)
    return info.trained_steps * cfg.batch_size  # images seen in training


if __name__ == "__main__":
    stage_main("diffusion_finetune", __doc__, _main, domain_for=domain_for)
