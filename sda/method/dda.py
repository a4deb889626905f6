"""The DDA projection (Gao et al., CVPR 2023): the one place that projects images towards the
source domain, used by ``synth_align`` ("Mix of Diffusion"), ``target_project`` and relabelling.

Reference behaviour by default (docs/method.md):

1. x_N = q_sample(ref, t = ts[N]) with one noise draw for the whole batch, where ``ts`` is the
   ascending respaced list (guided-diffusion's ``space_timesteps``).
2. for i = N-1 .. 0 (the off-by-one quirk: noised at index N, first denoised at N-1):
   out = p_sample(x_t, ts[i])                         (one noise draw per step)
   diff = LPF_D(ref) - LPF_D(out.pred_x0)             (pred_x0 clamped to [-1, 1])
   norm = ||diff||_2 over the WHOLE batch             (the batch-coupled quirk)
   x_{t-1} = out.sample - scale * d norm / d x_t      (then detached)
3. LPF_D = resize_right cubic with antialias, down by 1/D then up by D.

Switches: ``per_sample_norm`` (each image guided by its own norm, so results do not depend on the
batch) and ``fix_off_by_one`` (noise at ts[N-1], where denoising starts).

``method: ilvr`` keeps steps 1 and 3 and replaces 2's guidance by ILVR's (Choi et al., ICCV 2021):
x_{t-1} = out.sample - LPF_D(out.sample) + LPF_D(q_sample(ref, t-1)), no gradient (at the last step
the reference itself). ``method: distilled`` keeps step 1 and replaces 2 by one evaluation of a
student UNet (:mod:`sda.method.distill`) read as x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), then (with
``distill_lowpass``, the default) x0 - LPF_D(x0) + LPF_D(ref), as ILVR's last step, and clamped.
Every call counts its work where it happens (:class:`ProjectionCost`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from resize_right import resize
from tqdm.auto import tqdm

from sda.accel import autocast
from sda.config import Projection
from sda.method.sampling import respaced_timesteps

__all__ = ["ProjectionCost", "alpha_bar", "low_pass", "predicted_x0", "project", "start_timestep"]


@dataclass
class ProjectionCost:
    """The work of projections, counted where it happens: ``images`` projected, and per image each
    UNet ``forwards`` pass and each input-gradient ``backwards`` pass through it. A backward costs
    about two forwards, so the cost in forward-equivalents is ``forwards + 2 * backwards``."""

    images: int = 0
    forwards: int = 0
    backwards: int = 0

    @property
    def forward_equivalents(self) -> int:
        return self.forwards + 2 * self.backwards

    def per_image(self) -> float:
        """UNet forward-equivalents per projected image (0 before any)."""
        return self.forward_equivalents / self.images if self.images else 0.0

    def add(self, other: "ProjectionCost | dict[str, int]") -> "ProjectionCost":
        o = other if isinstance(other, dict) else asdict(other)
        self.images, self.forwards, self.backwards = (self.images + o["images"], self.forwards + o["forwards"],
                                                       self.backwards + o["backwards"])
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def low_pass(x: torch.Tensor, D: int) -> torch.Tensor:
    """LPF_D: resize_right cubic (antialiased) down to ``int(H / D)``, then back up to (H, W).

    ``x`` float (B, C, H, W); returns the same shape. D = 1 is the identity. resize_right's
    default zero padding is kept, as in the reference: near the borders the output is darkened,
    which at 16 px reaches the whole image (both sides of the guidance difference alike).
    """
    if D == 1:
        return x
    b, c, h, w = x.shape
    # scale_factors AND out_shape, as the reference calls it: resize_right then sizes the cubic
    # kernel from the factor, not from the (rounded) shape ratio
    small = resize(x, scale_factors=1.0 / D, out_shape=(b, c, int(h / D), int(w / D)))
    return resize(small, scale_factors=float(D), out_shape=(b, c, h, w))


def _alphas_cumprod_fp64(sched: DDPMScheduler) -> torch.Tensor:
    """alphas_cumprod in float64, as guided-diffusion computes its coefficients (diffusers' float32
    cumprod drifts ~1e-5 per step from the reference; float64 brings it to ~1e-7)."""
    cfg = sched.config
    if cfg.beta_schedule == "linear" and cfg.trained_betas is None:
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=torch.float64)
    else:
        betas = sched.betas.double()
    return torch.cumprod(1.0 - betas, dim=0)


def start_timestep(projection: Projection, num_train_timesteps: int) -> int:
    """The training-schedule timestep the reference is noised to: ``ts[N]``, or ``ts[N-1]`` with
    ``fix_off_by_one`` (``ts`` the ascending respaced list)."""
    ts = respaced_timesteps(num_train_timesteps, projection.respacing)
    return ts[projection.N - 1 if projection.fix_off_by_one else projection.N]


def project(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    projection: Projection = Projection(),
    *,
    class_labels: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: bool = False,
    cost: ProjectionCost | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Project ``images`` (float (B, 3, H, W) in [-1, 1]) and return the projections, same shape
    and range, detached, with the settings of ``projection`` (:class:`sda.config.Projection`, whose
    defaults are the project's; ``batch_size``, ``channels_last`` and ``compile`` are the caller's:
    here the batch is ``images``).

    ``unet(x, t, class_labels=...)`` must return ``.sample`` with 3 (epsilon) or 6 (epsilon and
    learned-range variance) channels; ``class_labels`` is passed through (the embedded model's null
    label; ``None`` for ADM). ``scheduler`` is the model's training schedule (``clip_sample=True``);
    it is copied, never mutated. Noise comes from ``generator`` (``torch.randn`` semantics): one draw
    for the forward noising of the batch, then one per denoising step except the last; a list of B
    generators draws each image's noise from its own (diffusers' ``randn_tensor``).

    ``precision`` ("fp32" | "bf16" | "fp16") is the UNet's autocast on CUDA (the scheduler step, the
    low-pass and the guidance stay float32); ``unet`` may be a :func:`sda.accel.fast_model`
    (channels_last, ``torch.compile``). fp32 on the CPU whatever ``precision`` says.

    ``projection.method``: ``dda`` (the above), ``ilvr`` or ``distilled`` (``unet`` is then the student;
    module docstring). ``cost``, when given, is incremented by what this call did (images, UNet forwards,
    input-gradient backwards). ``noise`` (the shape of ``images``) replaces the forward noising's draw
    (the distillation pairs a student input with its teacher's output).
    """
    _check_inputs(images, projection)
    ts = respaced_timesteps(scheduler.config.num_train_timesteps, projection.respacing)  # ascending: 0, 10, ..., 999
    ref = images.float()
    b = ref.shape[0]
    run = _Run(unet=unet, training=scheduler, sched=_respaced(scheduler, ts), ts=ts, ref=ref,
               ref_low=low_pass(ref, projection.D), D=projection.D, N=projection.N,
               start=projection.N - 1 if projection.fix_off_by_one else projection.N,
               kwargs={} if class_labels is None else {"class_labels": class_labels.to(ref.device)},
               amp=autocast(ref.device, projection.precision), generator=generator,
               cost=cost if cost is not None else ProjectionCost(), progress=progress)
    run.cost.images += b
    x = _noised(run, noise)
    return _METHODS[projection.method](run, x, projection)


def _check_inputs(images: torch.Tensor, projection: Projection) -> None:
    N, D, respacing = projection.N, projection.D, projection.respacing
    if not 1 <= N < respacing:
        raise ValueError(f"N must be in [1, respacing - 1] = [1, {respacing - 1}], got {N}")
    if D < 1 or images.shape[-1] // D < 1:
        raise ValueError(f"D must be >= 1 and at most the image side {images.shape[-1]}, got {D}")
    if projection.scale < 0:
        raise ValueError(f"scale must be >= 0, got {projection.scale}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")


def _respaced(scheduler: DDPMScheduler, ts: list[int]) -> DDPMScheduler:
    """A copy of the training ``scheduler`` that steps down the respaced timesteps ``ts`` (ascending):
    ``step`` walks ts[i] -> ts[i-1], with guided-diffusion's float64 cumulative alphas."""
    sched = DDPMScheduler.from_config(scheduler.config)
    sched.set_timesteps(timesteps=ts[::-1])
    sched.alphas_cumprod = _alphas_cumprod_fp64(sched)
    return sched


@dataclass
class _Run:
    """What every projection method reads: the models and schedules, the reference (``ref``, float (B, 3, H, W))
    and its low frequencies, the respaced timesteps ``ts``, where denoising starts and where the forward
    noising put the images (``start``), the UNet's extra arguments and autocast, the noise and the count."""

    unet: torch.nn.Module
    training: DDPMScheduler
    sched: DDPMScheduler
    ts: list[int]
    ref: torch.Tensor
    ref_low: torch.Tensor
    D: int
    N: int
    start: int
    kwargs: dict[str, Any]
    amp: Any
    generator: torch.Generator | list[torch.Generator] | None
    cost: ProjectionCost
    progress: bool

    def timestep(self, t: int) -> torch.Tensor:
        return torch.full((self.ref.shape[0],), t, device=self.ref.device, dtype=torch.long)


def _noised(run: _Run, noise: torch.Tensor | None) -> torch.Tensor:
    """Step 1: q(x_t | x_0) at the respaced index ``run.start``, one draw for the whole batch (or ``noise``)."""
    ref = run.ref
    if noise is None:
        noise = randn_tensor(ref.shape, generator=run.generator, device=ref.device, dtype=ref.dtype)
    elif noise.shape != ref.shape:
        raise ValueError(f"noise must have the shape of images {tuple(ref.shape)}, got {tuple(noise.shape)}")
    return run.sched.add_noise(ref, noise.to(device=ref.device, dtype=ref.dtype), run.timestep(run.ts[run.start]))


def _dda(run: _Run, x: torch.Tensor, projection: Projection) -> torch.Tensor:
    """Step 2, DDA's guided denoising from ts[N-1] to ts[0] (module docstring)."""
    b = x.shape[0]
    for i in tqdm(range(run.N - 1, -1, -1), desc="project", leave=False, disable=not run.progress):
        t = run.ts[i]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            # the model output at the ORIGINAL timestep t (not the respaced index)
            with run.amp:
                model_out = run.unet(x, run.timestep(t), **run.kwargs).sample
            run.cost.forwards += b
            # p_sample: pred_x0 (clamped) and x_{t-1} on the respaced schedule
            out = run.sched.step(model_out.float(), t, x, generator=run.generator)
            # low-pass guidance towards the reference, gradient through the UNet and the clamp
            diff = run.ref_low - low_pass(out.pred_original_sample, run.D)
            if projection.per_sample_norm:
                norm = torch.linalg.vector_norm(diff.flatten(1), dim=1).sum()
            else:
                norm = torch.linalg.vector_norm(diff)
            grad = torch.autograd.grad(norm, x)[0]
            run.cost.backwards += b
        x = (out.prev_sample - projection.scale * grad).detach()
    return x


def _distilled(run: _Run, x: torch.Tensor, projection: Projection) -> torch.Tensor:
    """Step 2 replaced by one evaluation of the student UNet (``run.unet``), read as x0 (module docstring)."""
    with torch.no_grad(), run.amp:
        eps = run.unet(x, run.timestep(run.ts[run.start]), **run.kwargs).sample
    run.cost.forwards += x.shape[0]
    x0 = predicted_x0(x, eps.float(), alpha_bar(run.training, run.ts[run.start]))
    if projection.distill_lowpass:  # the low frequencies of the reference, as ILVR's last step
        x0 = x0 - low_pass(x0, run.D) + run.ref_low
    return x0.clamp(-1, 1)


def predicted_x0(x: torch.Tensor, model_out: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), unclamped, from the model's output at a timestep whose
    cumulative alpha is ``alpha_bar`` (:func:`alpha_bar`): its first three channels are epsilon (a
    learned variance, if any, is not used)."""
    return (x - (1 - alpha_bar) ** 0.5 * model_out[:, :3]) / alpha_bar ** 0.5


def alpha_bar(scheduler: DDPMScheduler, t: int) -> float:
    """The cumulative alpha of the training schedule at timestep ``t``, computed in float64 as
    guided-diffusion does."""
    return float(_alphas_cumprod_fp64(scheduler)[t])


def _ilvr(run: _Run, x: torch.Tensor, projection: Projection) -> torch.Tensor:
    """ILVR from ``x`` (the reference noised at ts[N] or ts[N-1]) down the respaced steps ts[N-1] .. ts[0]:
    each step's sample keeps its high frequencies and takes the low ones of the reference noised to
    the step's target time (one draw each), the last one those of the reference itself. No gradient."""
    b, ref, D = x.shape[0], run.ref, run.D
    with torch.no_grad():
        for i in tqdm(range(run.N - 1, -1, -1), desc="project (ilvr)", leave=False, disable=not run.progress):
            with run.amp:
                model_out = run.unet(x, run.timestep(run.ts[i]), **run.kwargs).sample
            run.cost.forwards += b
            sample = run.sched.step(model_out.float(), run.ts[i], x, generator=run.generator).prev_sample
            if i > 0:
                noise = randn_tensor(ref.shape, generator=run.generator, device=ref.device, dtype=ref.dtype)
                target = run.sched.add_noise(ref, noise, run.timestep(run.ts[i - 1]))
            else:
                target = ref
            x = sample - low_pass(sample, D) + low_pass(target, D)
    return x


_METHODS = {"dda": _dda, "ilvr": _ilvr, "distilled": _distilled}
