"""A one-evaluation projector distilled from the guided projection (``projection.method: distilled``).

The student is a copy of the diffusion model's projector UNet, started from its weights and trained
so that ONE evaluation at the projection's start timestep t (``ts[N]``) gives what the teacher
(``projection.teacher``: ``dda`` or ``ilvr`` at the projection's respacing, N, D, scale) gives from
the same noised image:

    x_t    = q_sample(x, t, noise)            x: a synthetic image, noise: one seeded draw per pair
    target = teacher(x, noise)                the teacher's projection, uint8 as the pipeline keeps them
    y      = x0 - LPF_D(x0) + LPF_D(x)        x0 = (x_t - sqrt(1 - a_t) eps_student(x_t)) / sqrt(a_t)
    loss   = || y - target ||^2

With ``distill_lowpass`` (the default) the student's output takes the low frequencies of the image it
projects, as ILVR's last step does, so the student learns the high ones only; ``false``: y = x0. On the
embedded domain this is the difference between SDA 5 points under the default projection's and
within half a point of it: from one noisy evaluation a small UNet cannot recover the digit's shape,
which the teacher's walk keeps from the reference (docs/compute.md).

This is the knowledge distillation of a sampler (Luhman & Luhman, 2021) at one noise level: the
projection always starts at the same t, so one target per input suffices (no consistency
training over t). The pairs are computed once: ``distill_images`` synthetic images (a seeded draw of
the set) times ``distill_draws`` noise draws, kept as uint8 targets plus the seed of each draw (the
noise is drawn again when a pair is used). The student then trains ``distill_steps`` AdamW steps on seeded random batches of ``batch_size``
pairs. Same inputs and params, same student bytes (on a GPU with ``runtime.deterministic``).

Costs, one-off: the teacher's projections (pairs x its FE per image) and the student's training
(~3 FE per pair seen); both are in the record. A killed run starts the distillation over (only a
finished student is reused). Memory: the chosen images and the targets (2 x pairs x H x W x 3 bytes
on the host); on a GPU the projector, the student, its gradients and AdamW's state (~5x the weights).
The teacher runs in ``projection.precision`` without the fast mode's ``channels_last`` / ``compile``;
the student trains in fp32 (bf16 with ``precision: bf16``).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sda.accel import autocast, name_oom
from sda.config import Projection
from sda.io.atomic import atomic_write_json
from sda.io.images import to_uint8, to_unit_range
from sda.io.shards import read_manifest, read_positions
from sda.method.dda import ProjectionCost, alpha_bar, low_pass, predicted_x0, project, start_timestep
from sda.models.diffusion import load_diffusion, save_diffusion
from sda.runtime import derive_seed

__all__ = ["RECORD", "STUDENT_FIELDS", "distill", "pair_noise", "projection_record", "read_record", "seeded_subset",
           "student_mismatch", "train_projector"]

log = logging.getLogger("sda.distill")

RECORD = "projector.json"  # in a projector folder: what projects (the method and its settings)

# the Projection fields a distilled student depends on (its teacher, and how it was trained)
STUDENT_FIELDS = ("teacher", "respacing", "N", "D", "scale", "per_sample_norm", "fix_off_by_one", "batch_size",
                  "distill_images", "distill_draws", "distill_steps", "distill_lr", "distill_lowpass")
# what a student distilled before a field existed was distilled with
OLD_RECORD_DEFAULTS: dict[str, Any] = {"distill_lowpass": False}
# the fields that say what a projection with a given method computes (the guided methods)
GUIDED_FIELDS = ("respacing", "N", "D", "scale", "per_sample_norm", "fix_off_by_one")


def projection_record(projection: Projection) -> dict[str, Any]:
    """What a projector folder's ``projector.json`` says: the method and the settings that define it."""
    fields = STUDENT_FIELDS if projection.method == "distilled" else GUIDED_FIELDS
    return {"method": projection.method, **{f: getattr(projection, f) for f in fields}}


def read_record(model_dir: str | Path) -> dict[str, Any] | None:
    """A projector folder's ``projector.json``, or None when it has none."""
    path = Path(model_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def student_mismatch(record: dict[str, Any], projection: Projection) -> list[str]:
    """The settings in which ``projection`` differs from what the student of ``record`` was distilled with
    (``batch_size`` aside: one evaluation per image does not depend on its batch)."""
    want = projection_record(projection)
    had = {k: record.get(k, OLD_RECORD_DEFAULTS.get(k)) for k in want}
    return [f"{k}: {had[k]!r} (params: {v!r})" for k, v in want.items() if k != "batch_size" and had[k] != v]


def pair_noise(seed: int, indices: np.ndarray, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise draws of pairs ``indices`` (one (C, H, W) draw each, from ``derive_seed(seed, "pair", i)``):
    the same for the teacher and every time the student sees the pair. (len(indices), C, H, W)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, "pair", int(i))))
                        for i in indices]).to(device)


def distill(
    unet: torch.nn.Module,
    scheduler: Any,
    images: np.ndarray,
    projection: Projection,
    *,
    null_label: int | None,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the one-evaluation student of ``unet`` (the projector, left unchanged) on ``images``
    (uint8 (M, H, W, 3)) with the settings of ``projection`` (``method: distilled``; module docstring).

    ``batch_size`` must be a number here (the teacher's guidance batch and the student's batch).
    Returns the student (eval mode, on ``device``) and its training record (content only: settings,
    the loss per 50 steps, the work counted)."""
    device = torch.device(device)
    if projection.batch_size == "auto":
        raise ValueError("projection.batch_size: distillation needs a number (the batch of teacher and student)")
    bs, draws = int(projection.batch_size), projection.distill_draws
    teacher = projection.model_copy(update={"method": projection.teacher})
    m, shape = len(images), (3, images.shape[1], images.shape[2])
    n = m * draws
    t = start_timestep(projection, scheduler.config.num_train_timesteps)
    labels = (lambda k: None) if null_label is None else (  # noqa: E731
        lambda k: torch.full((k,), null_label, dtype=torch.long, device=device))

    # 1. the teacher's projections of every pair, once
    targets = np.empty((n, *images.shape[1:]), dtype=np.uint8)
    cost = ProjectionCost()
    for start in tqdm(range(0, n, bs), desc=f"distill: {teacher.method} teacher", unit="batch", disable=not progress):
        idx = np.arange(start, min(start + bs, n))
        gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "teacher", start))
        y = project(unet, scheduler, to_unit_range(images[idx % m], device), teacher, class_labels=labels(len(idx)),
                    generator=gen, noise=pair_noise(seed, idx, shape, device), cost=cost)
        targets[idx] = to_uint8(y)

    # 2. the student: the projector's copy, trained on seeded random batches of pairs
    student = copy.deepcopy(unet).to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=projection.distill_lr, weight_decay=0.0)
    a = alpha_bar(scheduler, t)
    tt = torch.full((bs,), t, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    losses: list[float] = []
    bar = tqdm(range(projection.distill_steps), desc="distill: student", unit="step", disable=not progress)
    for _ in bar:
        idx = torch.randint(n, (bs,), generator=gen).numpy()
        x0 = to_unit_range(images[idx % m], device)
        x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * pair_noise(seed, idx, shape, device)
        kwargs = {} if null_label is None else {"class_labels": labels(bs)}
        with autocast(device, "bf16" if projection.precision == "bf16" else "fp32"):  # fp16 would need loss scaling
            out = student(x_t, tt, **kwargs).sample
        y = predicted_x0(x_t, out.float(), a)
        if projection.distill_lowpass:
            y = y - low_pass(y, projection.D) + low_pass(x0, projection.D)
        loss = F.mse_loss(y, to_unit_range(targets[idx], device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    curve = [round(float(np.mean(losses[i: i + 50])), 6) for i in range(0, len(losses), 50)]
    log.info("distilled a one-evaluation projector from %s at t=%d: %d pairs (%d images x %d draws), %d steps, "
             "loss %.4f -> %.4f", teacher.method, t, n, m, draws, len(losses), curve[0], curve[-1])
    record = {**projection_record(projection), "t_start": t, "pairs": n, "loss_every_50_steps": curve,
              "teacher_cost": cost.as_dict(),
              # forward + backward of the student per pair seen: ~3 forward-equivalents
              "student_forward_equivalents": 3 * bs * len(losses)}
    return student, record


def seeded_subset(shard_dir: str | Path, k: int, seed: int) -> np.ndarray:
    """``k`` images of the shard set ``shard_dir`` (all of them when it holds fewer), a seeded draw
    without replacement, in the set's order: uint8 (k, H, W, 3). Streams, and reads only the shards that
    hold a chosen image: memory is the k images."""
    total = read_manifest(shard_dir)["count"]
    chosen = np.random.default_rng(seed).choice(total, min(k, total), replace=False)
    return np.stack([s.image for s in read_positions(shard_dir, chosen)])


def train_projector(model_dir: str | Path, images_dir: str | Path, out: str | Path, projection: Projection, *,
                    seed: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Distil the projector of the diffusion model folder ``model_dir`` on ``projection.distill_images``
    images of the shard set ``images_dir`` (:func:`distill`) and write the student at ``out`` as a
    diffusion model folder (``unet/``, ``scheduler/``, ``info.json``: :func:`sda.models.diffusion.load_diffusion`
    reads it) with ``projector.json`` (the record), written last. Returns the record."""
    unet, scheduler, info = load_diffusion(model_dir, device)
    images = seeded_subset(images_dir, projection.distill_images, derive_seed(seed, "images"))
    with name_oom("projection.batch_size", int(projection.batch_size), "distilling the projector"):
        student, record = distill(unet, scheduler, images, projection, null_label=info.null_label, seed=seed,
                                  device=device)
    save_diffusion(out, student.cpu(), scheduler, info)
    del unet, student
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the projection's workers need it next
    atomic_write_json(Path(out) / RECORD, record)
    return record
