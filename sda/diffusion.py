"""Diffusion models for the embedded domain: one class-conditional ``UNet2DModel`` with a "null"
class serves as both the unconditional projector (label = ``num_classes``) and the class-conditional
generator, as DESIGN.md §4 measured. Training with EMA, respaced ancestral sampling with an explicit
per-sample seed, and ``save_pretrained`` folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from sda.shards import atomic_dir, atomic_write_json

__all__ = [
    "build_unet",
    "finetune_epsilon",
    "load_diffusion",
    "make_scheduler",
    "respaced_timesteps",
    "sample_class_conditional",
    "save_diffusion",
    "train_diffusion",
    "to_uint8",
    "to_unit_range",
]


def build_unet(
    image_size: int,
    num_classes: int,
    block_out_channels: Sequence[int],
    layers_per_block: int,
    attention_levels: Sequence[bool],
    norm_num_groups: int = 8,
) -> UNet2DModel:
    """A small class-conditional UNet; class ``num_classes`` is the "null" (unconditional) label."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        attention_head_dim=min(32, block_out_channels[-1]),
        num_class_embeds=num_classes + 1,
    )


def make_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The training schedule: linear betas 1e-4..0.02, epsilon prediction, fixed-small variance,
    ``clip_sample`` (pred_x0 clamped to [-1, 1], as guided-diffusion's ``clip_denoised``)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
        timestep_spacing="linspace",
    )


def respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(T, str(steps))`` for one section, ascending:
    ``round(i * (T - 1) / (steps - 1))``; for T=1000, steps=100: 0, 10, ..., 50, 61, ..., 999."""
    if steps < 2 or steps > num_train_timesteps:
        raise ValueError(f"steps must be in [2, {num_train_timesteps}], got {steps}")
    frac = (num_train_timesteps - 1) / (steps - 1)
    return [int(round(i * frac)) for i in range(steps)]


def to_unit_range(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) (NumPy, or a tensor on any device) -> float32 (B, 3, H, W) in [-1, 1] on ``device``."""
    return torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def train_diffusion(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    null_label: int,
    steps: int,
    batch_size: int,
    lr: float,
    ema_decay: float,
    null_label_prob: float,
    seed: int,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[UNet2DModel, list[float]]:
    """Epsilon-prediction training with class dropout to ``null_label``; returns (EMA model, losses).

    ``images`` uint8 (N, H, W, 3); labels int (N,). Batches are sampled with replacement from a
    generator seeded by ``seed``, so the run is reproducible on one machine.
    """
    gen = torch.Generator().manual_seed(seed)
    unet.to(device).train()
    x_all = to_unit_range(images, device)
    y_all = torch.as_tensor(labels, dtype=torch.long, device=device)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, power=0.75)
    T = scheduler.config.num_train_timesteps
    losses: list[float] = []
    bar = tqdm(range(steps), desc="diffusion", unit="step", leave=False)
    for step in bar:
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen).to(device)
        x0, y = x_all[idx], y_all[idx].clone()
        drop = torch.rand(batch_size, generator=gen).to(device) < null_label_prob
        y[drop] = null_label
        t = torch.randint(0, T, (batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        xt = scheduler.add_noise(x0, noise, t)  # q(x_t | x_0), DDPM eq. 4
        loss = F.mse_loss(unet(xt, t, class_labels=y).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if on_step:
            on_step(step + 1, losses[-1])
    ema.copy_to(unet.parameters())
    unet.eval()
    return unet, losses


def finetune_epsilon(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    batches: Iterator[tuple[np.ndarray, np.ndarray | None]],
    *,
    steps: int,
    lr: float,
    seed: int,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Fine-tune a pretrained diffusion model in place on source images with the simple epsilon
    loss (DDPM L_simple) on its first C output channels; returns the per-step losses.

    ``model(x_t, t[, class_labels=...]).sample`` with C = ``model.config.in_channels`` input channels.
    ``batches`` yields at least ``steps`` (images uint8 (B, H, W, 3), labels int (B,)) pairs, e.g.
    :func:`sda.streaming.endless_batches`; labels are passed to class-conditional models (DiT) and
    must be ``None`` for unconditional ones (ADM). ``encode`` maps [-1, 1] pixels to the model's space
    (DiT: VAE latents times the scaling factor). A learned-variance head is trained only through the
    layers it shares with epsilon (guided-diffusion's L_hybrid adds a variational term: not done here).
    ``seed`` fixes the timesteps and noise, and seeds the global generator that dropout and
    ``encode``'s latent sampling draw from.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    ch = model.config.in_channels
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    T = scheduler.config.num_train_timesteps
    losses: list[float] = []
    for _, (images, labels) in zip(tqdm(range(steps), desc="finetune", unit="step", leave=False), batches):
        x0 = to_unit_range(images, device)
        if encode is not None:
            with torch.no_grad():
                x0 = encode(x0)
        b = len(x0)
        t = torch.randint(0, T, (b,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        kwargs = {} if labels is None else {"class_labels": torch.as_tensor(labels, device=device)}
        out = model(scheduler.add_noise(x0, noise, t), t, **kwargs).sample
        loss = F.mse_loss(out[:, :ch].float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    if len(losses) < steps:
        raise ValueError(f"finetune_epsilon: the batches ran out after {len(losses)} of {steps} steps")
    model.eval()
    return losses


@torch.no_grad()
def sample_class_conditional(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    class_labels: Sequence[int],
    seeds: Sequence[int],
    *,
    null_label: int,
    steps: int,
    guidance_scale: float = 1.0,
    clamp: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Respaced ancestral (DDPM) sampling; returns float (B, C, S, S) with C, S the model's
    ``in_channels`` and ``sample_size``, clamped to [-1, 1] when ``clamp`` (pixels, not latents).

    ``unet(x, t, class_labels=...)`` returns ``.sample`` with C channels (epsilon) or 2C (epsilon and
    learned-range variance: a UNet2DModel or a DiTTransformer2DModel). Sample ``b`` depends only on
    ``(class_labels[b], seeds[b])``: its initial noise and every step's noise come from its own
    ``torch.Generator``. Classifier-free guidance (Ho & Salimans 2022) on the epsilon channels:
    eps = eps_null + w * (eps_cond - eps_null); w = 1 is the plain conditional model.
    """
    if len(class_labels) != len(seeds):
        raise ValueError("class_labels and seeds must have the same length")
    sched = DDPMScheduler.from_config(scheduler.config)  # never mutate the caller's scheduler
    sched.set_timesteps(timesteps=respaced_timesteps(sched.config.num_train_timesteps, steps)[::-1])
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    size, ch = unet.config.sample_size, unet.config.in_channels
    b = len(seeds)
    # 1. initial noise x_T ~ N(0, I), one generator per sample
    x = randn_tensor((b, ch, size, size), generator=gens).to(device)
    y = torch.as_tensor(list(class_labels), dtype=torch.long, device=device)
    y_null = torch.full_like(y, null_label)
    for t in tqdm(sched.timesteps, desc="sample", leave=False, disable=not progress):
        tt = torch.full((b,), int(t), device=device, dtype=torch.long)
        # 2. predict the noise, with classifier-free guidance when w != 1
        if guidance_scale == 1.0:
            eps = unet(x, tt, class_labels=y).sample
        else:
            out_c, out_u = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([y, y_null])).sample.chunk(2)
            eps = out_c.clone()  # learned variance channels (if any) from the conditional branch
            eps[:, :ch] = out_u[:, :ch] + guidance_scale * (out_c[:, :ch] - out_u[:, :ch])
        # 3. x_{t-1} ~ p(x_{t-1} | x_t), DDPM eq. 6-7 on the respaced schedule
        x = sched.step(eps.float().cpu(), t, x.cpu(), generator=gens).prev_sample.to(device)
    return x.clamp(-1, 1) if clamp else x


def save_diffusion(unet: UNet2DModel, scheduler: DDPMScheduler, out_dir: str | Path, info: dict[str, Any]) -> None:
    """``out_dir/unet`` and ``out_dir/scheduler`` (``save_pretrained``) plus ``out_dir/info.json``
    (``null_label``, ``num_classes``, training log), written atomically."""
    with atomic_dir(out_dir) as tmp:
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        atomic_write_json(tmp / "info.json", info)


def load_diffusion(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[UNet2DModel, DDPMScheduler, dict[str, Any]]:
    model_dir = Path(model_dir)
    if not (model_dir / "info.json").is_file():
        raise FileNotFoundError(f"{model_dir}/info.json is missing: run the diffusion_finetune stage first")
    unet = UNet2DModel.from_pretrained(model_dir / "unet", low_cpu_mem_usage=False).to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    return unet, scheduler, json.loads((model_dir / "info.json").read_text())
