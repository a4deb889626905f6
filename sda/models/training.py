"""The one diffusion training loop: epsilon prediction (DDPM's L_simple), used to train the
embedded UNet from scratch and to fine-tune ADM / DiT on source images."""

from __future__ import annotations

import math
from typing import Callable, Iterator, get_args

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from sda.config import LrSchedule
from sda.io.images import to_unit_range

__all__ = ["LR_SCHEDULES", "lr_factor", "random_batches", "train_epsilon"]

Batches = Iterator[tuple["np.ndarray | torch.Tensor", "np.ndarray | torch.Tensor | None"]]


def random_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> Batches:
    """Endless batches drawn with replacement from in-memory arrays (uint8 (N, H, W, 3), int (N,)):
    each ``next`` draws ``batch_size`` indices from ``generator``."""
    x_all = torch.as_tensor(images).to(device)
    y_all = torch.as_tensor(labels, dtype=torch.long, device=device)
    while True:
        idx = torch.randint(0, len(x_all), (batch_size,), generator=generator).to(device)
        yield x_all[idx], y_all[idx].clone()


def train_epsilon(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    seed: int,
    generator: torch.Generator | None = None,
    null_label: int | None = None,
    null_label_prob: float = 0.0,
    warmup_steps: int = 0,
    lr_schedule: str = "constant",
    ema_decay: float | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, torch.nn.Module], bool] | None = None,
) -> list[float]:
    """Train ``model`` in place with the epsilon loss on its first C output channels; returns the
    per-step losses. The model ends in eval mode, holding the EMA weights when ``ema_decay`` is set.

    ``model(x_t, t[, class_labels=...]).sample`` with C = ``model.config.in_channels`` input channels.
    ``batches`` yields at least ``steps`` (images uint8 (B, H, W, 3), labels int (B,) or ``None``)
    pairs (:func:`random_batches`, :func:`sda.io.streaming.endless_batches`); labels go to
    class-conditional models (the embedded UNet, DiT) and are ``None`` for unconditional ones (ADM).
    With ``null_label`` set, each label is replaced by it with probability ``null_label_prob``
    (classifier-free guidance's class dropout). ``encode`` maps [-1, 1] pixels to the model's space
    (DiT: VAE latents times the scaling factor). ``warmup_steps``: linear warm-up of the learning
    rate. ``lr_schedule``: ``constant`` (after the warm-up) or ``cosine`` (half a cosine from ``lr`` to 0 over
    the ``steps``, times the warm-up ramp). A learned-variance head is trained only through the layers it shares with epsilon
    (guided-diffusion's L_hybrid adds a variational term: not done here).

    Randomness: timesteps, noise and class dropout come from ``generator`` (default: a new one
    seeded by ``seed``; pass the one ``batches`` draws from to share a stream); ``seed`` also seeds
    the global generator that dropout layers and ``encode``'s latent sampling draw from.

    Checkpoints: every ``checkpoint_every`` steps (and after the last) ``on_checkpoint(step, model)``
    is called with the model in eval mode holding the weights it would be saved with (the EMA ones);
    training resumes from its own weights afterwards, so a callback that draws only from its own
    generators leaves the training bytes unchanged. It returns True to stop training there (then
    fewer than ``steps`` losses are returned).
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    ch = model.config.in_channels
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(lr_schedule, warmup_steps, steps))
    ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True, power=0.75) if ema_decay else None
    T = scheduler.config.num_train_timesteps
    losses: list[float] = []
    stopped = False
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False)
    for step, (images, labels) in zip(bar, batches):
        x0 = to_unit_range(images, device)
        if encode is not None:
            with torch.no_grad():
                x0 = encode(x0)
        b = len(x0)
        kwargs = {}
        if labels is not None:
            y = torch.as_tensor(labels, dtype=torch.long).to(device)
            if null_label is not None:
                y[torch.rand(b, generator=gen).to(device) < null_label_prob] = null_label
            kwargs["class_labels"] = y
        t = torch.randint(0, T, (b,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        out = model(scheduler.add_noise(x0, noise, t), t, **kwargs).sample  # q(x_t | x_0), DDPM eq. 4
        loss = F.mse_loss(out[:, :ch].float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(model.parameters())
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if on_step:
            on_step(step + 1, losses[-1])
        at_interval = checkpoint_every > 0 and (step + 1) % checkpoint_every == 0
        if on_checkpoint is not None and (at_interval or step + 1 == steps):
            if _checkpoint(model, ema, on_checkpoint, step + 1):
                stopped = True
                break
    if len(losses) < steps and not stopped:
        raise ValueError(f"train_epsilon: the batches ran out after {len(losses)} of {steps} steps")
    if ema is not None:
        ema.copy_to(model.parameters())
    model.eval()
    return losses


LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)


def lr_factor(schedule: str, warmup_steps: int, steps: int) -> Callable[[int], float]:
    """The learning rate's factor at step ``s`` (0-based): the linear warm-up ``(s + 1) / warmup_steps``
    (none at 0 steps), times 1 (``constant``) or half a cosine from 1 to 0 over ``steps`` (``cosine``)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {schedule!r}: use one of {LR_SCHEDULES}")

    def factor(s: int) -> float:
        ramp = min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        return ramp if schedule == "constant" else ramp * 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
    return factor


def _checkpoint(model: torch.nn.Module, ema: EMAModel | None, callback: Callable[[int, torch.nn.Module], bool],
                step: int) -> bool:
    """``callback(step, model)`` with the EMA weights swapped in (eval mode); the training weights and
    mode restored after it. Returns the callback's answer (stop or not)."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        return bool(callback(step, model))
    finally:
        if ema is not None:
            ema.restore(model.parameters())
        model.train()
