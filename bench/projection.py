"""Throughput and peak memory of the DDA projection (``sda.method.dda.project``) against the same loop
written the way the reference is structured (``sda.dda_reference.reference_project``), plus the
low-pass filter's difference from torch's bicubic-antialias resize.

Models (random weights: speed and memory do not depend on them):
- ``embedded``: the embedded profile's UNet (params.yaml ``diffusion_finetune``) at 16 px with the
  params' projection settings; CPU (and CUDA when present).
- ``adm256``: the full ADM-256 uncond architecture (552.8M parameters), 100 respaced steps, N=50,
  D=4, scale 6; CUDA only (a forward alone takes ~15 s per image on CPU).

    python bench/projection.py                       # everything this machine can run
    python bench/projection.py --models adm256 --batch-sizes 1 4 8 16 --steps 10
    python bench/projection.py --models adm256 --batch-sizes 1 --steps 1 --repeats 1   # CPU: seconds per step

``--steps`` shortens N for timing (images/s scales with 1/N: figures are reported per full
projection of N steps as configured, extrapolated from the measured per-step time).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sda.config import Projection, load_params
import sda.domains  # noqa: F401  (the domains' params sections)
from sda.method.dda import low_pass, project
from sda.method.dda_reference import reference_project
from sda.models.adm import ADM_256_UNCOND, ADM_DEFAULTS, adm_unet_config
from sda.models.diffusion import build_unet
from sda.models.schedulers import ddpm_scheduler



def _embedded():
    p = load_params()
    d, proj = p.diffusion_finetune, p.projection
    unet = build_unet(p.embedded.image_size, 10, d.block_out_channels, d.layers_per_block,
                      d.attention_levels, d.norm_num_groups)
    kw = dict(respacing=proj.respacing, N=proj.N, D=proj.D, scale=proj.scale)
    return unet, ddpm_scheduler(num_train_timesteps=d.num_train_timesteps), p.embedded.image_size, kw, 10


def _adm256():
    from diffusers import UNet2DModel

    unet = UNet2DModel(**adm_unet_config(**{**ADM_DEFAULTS, **ADM_256_UNCOND}))
    return unet, ddpm_scheduler(learn_sigma=True), 256, dict(respacing=100, N=50, D=4, scale=6.0), None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds per call, peak CUDA memory in GiB or nan)."""
    fn()  # warm-up (cuDNN autotune, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    sec = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return sec, peak


def bench_model(name: str, device: torch.device, batch_sizes: list[int], steps: int | None, repeats: int) -> None:
    unet, sched, size, kw, null_label = {"embedded": _embedded, "adm256": _adm256}[name]()
    unet = unet.to(device).eval().requires_grad_(False)
    n_full = kw["N"]
    if steps:
        kw = {**kw, "N": min(steps, n_full)}
    scale_to_full = n_full / kw["N"]
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"\n{name}: {n_params:.1f}M parameters, {size} px, {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, %d threads' % torch.get_num_threads()}); "
          f"respacing {kw['respacing']}, N {n_full} (timed over {kw['N']}), D {kw['D']}, scale {kw['scale']}")
    print(f"  {'batch':>5} {'precision':>9} {'ours img/s':>11} {'peak GiB':>9} {'naive img/s':>12} {'peak GiB':>9} {'ours/naive':>10}")
    for bs in batch_sizes:
        x = torch.rand(bs, 3, size, size, device=device) * 2 - 1
        labels = None if null_label is None else torch.full((bs,), null_label, device=device)
        call = (lambda xt, t: unet(xt, t).sample) if labels is None else (lambda xt, t: unet(xt, t, class_labels=labels).sample)
        for bf16 in (False, True):
            if bf16 and device.type != "cuda":
                continue  # CPU bf16 autocast is slower than fp32 on these machines' cores
            try:
                ours, peak = _time(lambda: project(unet, sched, x, Projection(precision="bf16" if bf16 else "fp32", **kw),
                                                   class_labels=labels),
                                   device, repeats)

                def naive():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        reference_project(call, x, **kw)
                ref, ref_peak = _time(naive, device, repeats)
            except torch.OutOfMemoryError:
                print(f"  {bs:>5} {'bf16' if bf16 else 'fp32':>9}  out of memory")
                torch.cuda.empty_cache()
                break
            ips, ref_ips = bs / (ours * scale_to_full), bs / (ref * scale_to_full)
            mem = lambda g: f"{g:>9.2f}" if g == g else f"{'-':>9}"  # noqa: E731 - nan on CPU
            print(f"  {bs:>5} {'bf16' if bf16 else 'fp32':>9} {ips:>11.3g} {mem(peak)} {ref_ips:>12.3g} {mem(ref_peak)} {ips / ref_ips:>10.2f}")


def lpf_difference() -> None:
    """The LPF (resize_right cubic with antialias, as the reference) vs torch's bicubic antialias."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 256, 256, generator=g) * 2 - 1
    ours = low_pass(x, 4)
    small = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    torch_lpf = F.interpolate(small, size=(256, 256), mode="bicubic", antialias=True, align_corners=False)
    d = (ours - torch_lpf).abs()
    print(f"\nLPF D=4 at 256 px on uniform noise in [-1, 1]: resize_right vs torch bicubic+antialias: "
          f"max {d.max():.3e}, mean {d.mean():.3e} (one application; the pipeline uses resize_right itself)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, choices=["embedded", "adm256"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="time over this many guided steps (default: all N)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    models = args.models or (["embedded", "adm256"] if cuda else ["embedded"])
    lpf_difference()
    for m in models:
        if m == "adm256" and not cuda and args.models is None:
            print("\nadm256: skipped, no CUDA device (ask for it with --models adm256 --steps 1 to time the CPU)")
            continue
        bs = args.batch_sizes or ([1, 4, 8, 16] if m == "adm256" else [8, 32, 128])
        if m == "adm256":
            devices = [torch.device("cuda" if cuda else "cpu")]
        else:
            devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
        for dev in devices:
            bench_model(m, dev, bs, args.steps, args.repeats)


if __name__ == "__main__":
    main()
