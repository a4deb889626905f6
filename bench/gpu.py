"""The GPU check: one run, one table. ``bench/gpu.sh`` calls this; see its header for the how.

Sections (each row says what it measured, or why it was skipped):

- ``tests``: ``pytest -m gpu`` (the CUDA tests: ImageNet profile end to end on CUDA, bf16,
  LocalCUDACluster, out-of-memory message, ``runtime.device: cuda`` in every stage).
- ``adm256``: the DDA projection on ADM-256 (552.8M parameters, random weights: speed does not
  depend on them), 100 respaced steps, N=50, D=4, scale 6: images/s per full projection, achieved
  TFLOP/s (FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` on one guided step, not
  assumed) and peak GiB for fp32 / fp16 / bf16 / bf16+channels_last at batch 4, 8, 16, 32, and
  the reference-structured loop (``sda.dda_reference``) in fp32 and fp16 on the same card in the
  same run; then bf16 + ``torch.compile`` (in the faster layout) at ``--compile-batches`` (16), and
  with CUDA graphs when ``--graphs`` (or any modes with ``--compiled-modes``, ``--inductor`` for
  inductor settings). Timed over a few guided steps after a warm-up (images/s scales with 1/N). The
  compiled rows come last: ADM-256 compiles for about two minutes. ``--profile-batches`` adds the
  device-time split of one guided step by kernel kind (conv / GroupNorm / elementwise / copies).
- ``deviation``: the fast modes against the fp32 path: mean / p99.9 absolute pixel difference
  (uint8 levels) of full N=50 projections at 256 px; with the embedded pipeline's models in
  ``data/`` (after ``make run``), the SDA label agreement and top-1 on the embedded target domains.
- ``dit``: DiT-XL/2 generation (random weights), 250 steps + VAE decode, images/s and peak GiB,
  fp32 / bf16.
- ``resnet50``: classifier_align (SGD training steps) and evaluate (inference) images/s through
  the stages' own functions, 256 px uint8 in, resize + crop 224.

Without CUDA the same code runs on the CPU at tiny sizes (so that CI keeps the script working) and
the table says what was skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.accel import autocast, fast_model, layout_group_norms  # noqa: E402
from sda.models.adm import ADM_256_UNCOND, adm_unet_config  # noqa: E402
from sda.models.schedulers import ddpm_scheduler
from sda.method.dda import project  # noqa: E402
from sda.method.dda_reference import reference_project  # noqa: E402
from sda.config import Projection  # noqa: E402
from sda.runtime import set_deterministic  # noqa: E402

from tests.support.tiny_models import ADM_TINY_FLAGS as ADM_TINY, DIT_TINY, DIT_XL2, SD_VAE, VAE_TINY  # noqa: E402


class Table:
    """Rows of one table, printed as they come (so a killed run still shows its figures) and at the end."""

    COLS = ("section", "config", "batch", "img/s", "TFLOP/s", "peak GiB", "note")

    def __init__(self, out: Path | None, deadline: float) -> None:
        self.rows: list[dict] = []
        self.out, self.deadline = out, deadline

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, section: str, config: str, batch: int | str = "", ips: float | None = None,
            tflops: float | None = None, peak: float | None = None, note: str = "") -> None:
        fmt = lambda v, f: "" if v is None or v != v else format(v, f)  # noqa: E731 - None / nan -> blank
        row = {"section": section, "config": config, "batch": str(batch), "img/s": fmt(ips, ".3g"),
               "TFLOP/s": fmt(tflops, ".1f"), "peak GiB": fmt(peak, ".2f"), "note": note}
        self.rows.append(row)
        print("  " + " | ".join(row[c] for c in self.COLS), flush=True)
        if self.out:
            self.out.write_text(self.markdown())

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.COLS) + " |", "|" + "---|" * len(self.COLS)]
        lines += ["| " + " | ".join(r[c] for c in self.COLS) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(seconds of one call after the caller's warm-up, peak GiB of that call; nan on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    sec = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return sec, peak


def fast_settings(mode: str) -> dict[str, object]:
    """A row's mode name ("bf16+cl+compile+graphs", "bf16+cl+autotune", "fp16", ...) as projection params.
    "stockgn" keeps the stock GroupNorm under channels_last (its layout copies; for comparison); "det"
    runs the row as the stages run by default (``runtime.deterministic: true``: deterministic
    algorithms, no cuDNN benchmark), the other rows with cuDNN's benchmark."""
    parts = mode.split("+")
    return {"precision": "fp16" if "fp16" in mode else "bf16" if "bf16" in mode else "fp32",
            "channels_last": "cl" in parts, "layout_norms": "stockgn" not in parts, "deterministic": "det" in parts,
            "compile": "reduce-overhead" if "graphs" in mode else "max-autotune-no-cudagraphs" if "autotune" in mode
            else "default" if "compile" in mode else "none"}


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# kernel-name keywords -> kind, first match wins (cuDNN / CUTLASS conv kernels, cuBLAS GEMMs, flash attention)
KERNEL_KINDS = (("attention", ("flash", "fmha", "attention", "sdpa")),
                ("conv", ("conv", "dgrad", "wgrad", "fprop", "implicit", "xmma", "cudnn", "nhwc", "nchw")),
                ("gemm", ("gemm", "sm90", "sm80", "cutlass", "matmul", "_mm_", "addmm", "bmm")),
                ("norm", ("norm", "welford", "reduce", "red_", "per_")),
                ("copy", ("copy", "transpose", "cat", "memcpy", "memset", "fill")))


def kernel_split(fn, device: torch.device, top: int = 12) -> str:
    """Where one call of ``fn`` spends its device time: a split by kernel kind (conv / gemm /
    attention / norm / elementwise+fused / copy), and the ``top`` kernels printed to stdout."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        sync(device)
    events = [e for e in prof.key_averages()
              if (e.device_type.name == "CUDA") == cuda and not e.key.startswith("ProfilerStep")]
    own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(own(e) for e in events) or 1.0
    kinds: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        if name.startswith("triton_"):  # inductor's: fused pointwise (poi), reductions (red / per), templates (tem)
            kind = "gemm" if "_tem_" in name else "norm" if ("_red_" in name or "_per_" in name) else "elementwise"
        else:
            kind = next((k for k, words in KERNEL_KINDS if any(w in name for w in words)), "elementwise")
        kinds[kind] = kinds.get(kind, 0.0) + own(e)
    print(f"    top kernels ({total / 1e3:.0f} ms of {'device' if cuda else 'CPU'} time):", flush=True)
    for e in sorted(events, key=own, reverse=True)[:top]:
        print(f"      {100 * own(e) / total:5.1f}%  x{e.count:<5d} {e.key[:110]}", flush=True)
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------------------------- ADM


def adm(device: torch.device, full: bool):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**adm_unet_config(**(ADM_256_UNCOND if full else ADM_TINY)))
    return unet.to(device).eval().requires_grad_(False)


def guided_step_flops(unet, sched, size: int, device: torch.device) -> float:
    """FLOPs of one guided DDA step for one image: the UNet forward and the backward to its input
    (the weights need no gradient). The low-pass and scheduler arithmetic is not counted (< 0.1 %).
    ``backward()`` rather than ``autograd.grad``: FlopCounterMode's module tracker rejects the latter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device, requires_grad=True)
    t = torch.full((1,), 500, device=device)
    with FlopCounterMode(display=False) as counter:
        unet(x, t).sample.float().square().sum().backward()
    return float(counter.get_total_flops())


def bench_adm(t: Table, device: torch.device, full: bool, batches: list[int], steps: int,
              modes: list[str], describe: bool = True,
              profile_batches: tuple[int, ...] = ()) -> None:
    """Rows per (mode, batch): images/s, TFLOP/s, peak GiB. At ``profile_batches`` a row is
    followed by the device-time split of one guided step by kernel kind (``kernel_split``)."""
    unet, sched = adm(device, full), ddpm_scheduler(learn_sigma=True)
    size = 256 if full else 32
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    flops = guided_step_flops(unet, sched, size, device)
    name = "adm256" if full else "adm-tiny"
    if describe:
        t.add(name, "model", note=f"{n_params:.1f}M params, {size} px, {flops / 1e12:.3f} TFLOP per image per "
          f"guided step (counted), N=50, timed over {steps} steps; SDPA attention: "
          f"{type(unet.mid_block.attentions[0].processor).__name__}")
    kw = dict(respacing=100, D=4, scale=6.0)
    call = lambda xt, tt: unet(xt, tt).sample  # noqa: E731 - the reference loop's model(x, t)
    for mode in modes:
        skip_rest = ""
        for bs in batches:
            if skip_rest:
                t.add(name, mode, bs, note=skip_rest)
                continue
            fast = fast_settings(mode)
            if t.left() < (150 if fast["compile"] != "none" else 25):  # ADM-256 compiles for ~2 min
                t.add(name, mode, bs, note="skipped: time budget")
                continue
            x = torch.rand(bs, 3, size, size, device=device) * 2 - 1
            precision = fast["precision"]
            set_deterministic(fast["deterministic"])
            if mode.startswith("reference"):
                def run(n: int, precision=precision, x=x) -> None:
                    with autocast(device, precision):  # the reference's fp16 (or plain fp32)
                        reference_project(call, x, N=n, **kw)
            else:
                model = fast_model(unet, channels_last=fast["channels_last"], compile=fast["compile"],
                                   layout_norms=fast["layout_norms"])

                def run(n: int, model=model, precision=precision, x=x) -> None:
                    g = torch.Generator(device=device).manual_seed(0)
                    project(model, sched, x, Projection(N=n, precision=precision, **kw), generator=g)
            try:
                t0 = time.perf_counter()
                run(1)  # warm-up: cuDNN autotune, allocator, compilation
                sync(device)
                warm = time.perf_counter() - t0
                sec, peak = timed(lambda: run(steps), device)
            except Exception as err:  # noqa: BLE001 - one failed configuration must not end the check
                if is_oom(err):
                    skip_rest = "out of memory (and larger batches)"
                    torch.cuda.empty_cache()
                    t.add(name, mode, bs, note="out of memory")
                else:
                    t.add(name, mode, bs, note=f"error: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}")
                continue
            per_step = sec / steps
            note = f"warm-up {warm:.0f} s (compile)" if fast["compile"] != "none" else ""
            t.add(name, mode, bs, ips=bs / (per_step * 50), tflops=flops * bs / per_step / 1e12, peak=peak, note=note)
            if bs in profile_batches:
                t.add(name, f"{mode} profile", bs, note="device time: " + kernel_split(lambda: run(1), device))
        unet.to(memory_format=torch.contiguous_format)  # channels_last converts in place, norms too
        layout_group_norms(unet, keep_layout=False)
        set_deterministic(False)
    del unet
    if device.type == "cuda":
        torch.cuda.empty_cache()


def smooth_images(b: int, size: int, device: torch.device) -> torch.Tensor:
    """Deterministic photo-like test images in [-1, 1]: low-frequency noise, upsampled."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(-1, 1).to(device)


def bench_deviation(t: Table, device: torch.device, full: bool, modes: list[str], batch: int) -> None:
    from sda.io.images import to_uint8

    if t.left() < 40:
        t.add("deviation", "adm", note="skipped: time budget")
        return
    unet, sched = adm(device, full), ddpm_scheduler(learn_sigma=True)
    size = 256 if full else 32
    x = smooth_images(batch, size, device)
    outs = {}
    for mode in ["fp32", *modes]:
        fast = fast_settings(mode)
        precision = fast["precision"]
        model = fast_model(unet, channels_last=fast["channels_last"], compile=fast["compile"],
                           layout_norms=fast["layout_norms"])
        g = torch.Generator(device=device).manual_seed(0)
        t0 = time.perf_counter()
        outs[mode] = to_uint8(project(model, sched, x, Projection(respacing=100, N=50, D=4, scale=6.0,
                                                                  precision=precision), generator=g)).astype(np.int16)
        sec = time.perf_counter() - t0
        if mode != "fp32":
            d = np.abs(outs[mode] - outs["fp32"])
            t.add("deviation", f"{mode} vs fp32", batch, note=f"ADM {'256' if full else 'tiny'} random weights, N=50 "
                  f"({sec:.0f} s): |diff| mean {d.mean():.3f}, p99.9 {np.percentile(d, 99.9):.0f}, max {d.max()} "
                  "(uint8 levels)")
        if t.left() < 20:
            break
    unet.to(memory_format=torch.contiguous_format)
    layout_group_norms(unet, keep_layout=False)


def bench_embedded_agreement(t: Table, device: torch.device, modes: list[str], data: Path,
                             max_domains: int = 6) -> None:
    """SDA predictions with fast-mode projections vs fp32 projections, on the first ``max_domains``
    embedded target domains (clean first) of the pipeline outputs in ``data``."""
    needed = [data / p for p in ("diffusion_finetune/info.json", "source_model/config.json",
                                 "classifier_align/config.json", "target_data/domains.json")]
    if not all(p.is_file() for p in needed):
        t.add("deviation", "embedded", note="skipped: no trained embedded models in data/ (run `make run` first)")
        return
    from sda.models.classifiers import load_classifier
    from sda.models.diffusion import load_diffusion
    from sda.method.scoring import sda_logits
    from sda.method.projector import project_uint8
    from sda.io.shards import load_shards
    from sda.config import load_params

    params = load_params(ROOT / "params.yaml")
    from sda.layout import projector_dir

    unet, sched, info = load_diffusion(ROOT / projector_dir(params.projection.method), device)
    source = load_classifier(data / "source_model", device)
    aligned = load_classifier(data / "classifier_align", device)
    domains = json.loads((data / "target_data" / "domains.json").read_text())["domains"][:max_domains]
    base = params.projection
    preds: dict[str, list[np.ndarray]] = {m: [] for m in ["fp32", *modes]}
    labels, pix = [], {m: [] for m in modes}
    t0 = time.perf_counter()
    for d in domains:
        tgt = load_shards(data / "target_data" / d)
        labels.append(tgt.labels)
        so = source.logits(tgt.images, device=device)
        proj_fp32 = None
        for mode in preds:
            fast = fast_settings(mode)
            cfg = base.model_copy(update={k: fast[k] for k in ("precision", "channels_last", "compile")})
            bs = int(cfg.batch_size)
            out = []
            for c in range(0, len(tgt.images), bs):
                g = torch.Generator(device=device).manual_seed(c)
                out.append(project_uint8(unet, sched, tgt.images[c: c + bs], cfg, null_label=info.null_label,
                                         generator=g))
            proj = np.concatenate(out)
            if mode == "fp32":
                proj_fp32 = proj
            else:
                pix[mode].append(np.abs(proj.astype(np.int16) - proj_fp32.astype(np.int16)).ravel())
            ap = aligned.logits(proj, device=device)
            preds[mode].append(sda_logits(so, ap).argmax(1).numpy())
        if t.left() < 30:
            break
    y = np.concatenate(labels)
    p32 = np.concatenate(preds["fp32"])
    sec = time.perf_counter() - t0
    t.add("deviation", "embedded fp32", len(y), note=f"{len(labels)} domains, SDA top-1 {100 * (p32 == y).mean():.2f}% "
          f"({sec:.0f} s for all modes)")
    for mode in modes:
        p = np.concatenate(preds[mode])
        d = np.concatenate(pix[mode])
        t.add("deviation", f"embedded {mode} vs fp32", len(y),
              note=f"SDA label agreement {100 * (p == p32).mean():.2f}%, top-1 {100 * (p == y).mean():.2f}%; "
                   f"|pixel diff| mean {d.mean():.3f}, p99.9 {np.percentile(d, 99.9):.0f} (16 px)")


# --------------------------------------------------------------------------------------------- DiT


def bench_dit(t: Table, device: torch.device, full: bool, batch: int, modes: list[str]) -> None:
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    from sda.method.sampling import sample_dit

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(**(DIT_XL2 if full else DIT_TINY)).to(device).eval()
    vae = AutoencoderKL(**(SD_VAE if full else VAE_TINY)).to(device).eval()
    name = "dit-xl2" if full else "dit-tiny"
    n_params = sum(p.numel() for p in transformer.parameters()) / 1e6
    labels, seeds = [i % 1000 for i in range(batch)], list(range(batch))
    for mode in modes:
        if t.left() < 30:
            t.add(name, mode, batch, note="skipped: time budget")
            continue
        try:
            with autocast(device, mode):
                sample_dit(transformer, vae, labels, seeds, steps=2, device=device)  # warm-up at the timed shape
                s1, _ = timed(lambda: sample_dit(transformer, vae, labels, seeds, steps=3, device=device), device)
                s2, peak = timed(lambda: sample_dit(transformer, vae, labels, seeds, steps=6, device=device), device)
        except Exception as err:  # noqa: BLE001
            t.add(name, mode, batch, note=("out of memory" if is_oom(err) else f"error: {type(err).__name__}: {err}")[:160])
            torch.cuda.empty_cache() if device.type == "cuda" else None
            continue
        per_step = max(s2 - s1, 1e-9) / 3
        fixed = max(s1 - 3 * per_step, 0.0)  # VAE decode, noise set-up
        t.add(name, mode, batch, ips=batch / (fixed + 250 * per_step), peak=peak,
              note=f"{n_params:.1f}M params, 250 steps at {per_step * 1e3:.0f} ms/step + decode {fixed:.2f} s")
    del transformer, vae
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- ResNet-50


def bench_resnet(t: Table, device: torch.device, full: bool) -> None:
    import timm

    from sda.models.classifiers import predict_logits, train_classifier

    if t.left() < 20:
        t.add("resnet50", "classifier_align / evaluate", note="skipped: time budget")
        return
    arch, size, crop = ("resnet50", 256, 224) if full else ("resnet18", 40, 32)
    n_train, n_eval = (640, 2048) if full else (32, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(n_train, n_eval), size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 1000, len(images))
    model = timm.create_model(arch, num_classes=1000)
    spec = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=size, crop=crop)
    hp = dict(epochs=1, batch_size=64 if full else 16, lr=5e-4, weight_decay=1e-4, optimizer="sgd", momentum=0.9)
    train_classifier(model, images[:hp["batch_size"] * 2], labels[:hp["batch_size"] * 2], **spec, **hp, seed=0,
                     device=device, desc="warm-up")
    sec, peak = timed(lambda: train_classifier(model, images[:n_train], labels[:n_train], **spec, **hp, seed=0,
                                               device=device, desc="classifier_align"), device)
    t.add(arch, "classifier_align (train, fp32)", hp["batch_size"], ips=n_train / sec, peak=peak,
          note=f"{n_train} images {size} px uint8 -> crop {crop}, SGD")
    bs = 128 if full else 32
    predict_logits(model, images[:bs], **spec, batch_size=bs, device=device)
    sec, peak = timed(lambda: predict_logits(model, images[:n_eval], **spec, batch_size=bs, device=device), device)
    t.add(arch, "evaluate (inference, fp32)", bs, ips=n_eval / sec, peak=peak, note=f"{n_eval} images")


# --------------------------------------------------------------------------------------------- tests


def start_gpu_tests(log: Path, junit: Path | None) -> subprocess.Popen:
    """``pytest -m gpu`` in the background (it is mostly CPU-bound subprocess start-up: running it
    beside the benches keeps the whole check inside one short GPU lease)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests/e2e/test_gpu.py"]
    if torch.cuda.is_available() and importlib.util.find_spec("xdist"):
        cmd += ["-n", "4"]  # the two end-to-end runs and the compile test side by side
    if junit:
        cmd += [f"--junitxml={junit}"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def finish_gpu_tests(t: Table, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out = log.read_text()
    print("\n--- pytest -m gpu ---\n" + out[-8000:], flush=True)
    last = out.strip().splitlines()[-1].strip("= ") if out.strip() else f"exit {proc.returncode}"
    if proc.returncode not in (0, 5) and "passed" not in last and "failed" not in last:
        last = f"killed after {timeout:.0f} s (time budget)" if proc.returncode < 0 else f"exit {proc.returncode}: {last}"
    t.add("tests", "pytest -m gpu", note=f"{last} (ran beside the benches)")


def set_inductor(t: Table, settings: list[str]) -> None:
    """Apply ``KEY=VALUE`` settings to ``torch._inductor.config`` (values parsed as Python literals)."""
    import ast

    import torch._inductor.config as inductor

    for item in settings:
        key, _, value = item.partition("=")
        if not hasattr(inductor, key):
            raise SystemExit(f"--inductor {item}: torch._inductor.config has no setting {key!r}")
        setattr(inductor, key, ast.literal_eval(value))
    t.add("adm256", "inductor config", note=" ".join(settings))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=420, help="no new measurement starts after this (seconds)")
    ap.add_argument("--steps", type=int, default=3, help="guided steps timed per ADM configuration")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--sections", nargs="+", default=["tests", "adm", "deviation", "dit", "resnet"],
                    choices=["tests", "adm", "adm-eager", "adm-compiled", "deviation", "dit", "resnet"])
    ap.add_argument("--compile-batches", type=int, nargs="+", default=[16],
                    help="batches of the compiled rows (ADM-256 compiles for ~2 min, and again for the "
                         "first new shape after it: 4 8 16 32 takes ~5 min more)")
    ap.add_argument("--graphs", action="store_true", help="also time compile + CUDA graphs (one more compilation)")
    ap.add_argument("--eager-modes", nargs="+", default=None, metavar="MODE",
                    help="the eager ADM rows' modes, '+'-joined words: fp16 | bf16, cl (channels_last), stockgn "
                         "(its stock GroupNorm), det (deterministic algorithms, as the stages by default), "
                         "compile, graphs, autotune; 'reference ...' is the reference-structured loop "
                         "(default: reference fp32, reference fp16, fp32, fp16, bf16, bf16+cl)")
    ap.add_argument("--compiled-modes", nargs="+", default=None, metavar="MODE",
                    help="the compiled rows' modes, e.g. bf16+compile bf16+cl+stockgn+compile (default: "
                         "bf16+cl+compile, its +graphs with --graphs, then bf16+compile while the budget lasts)")
    ap.add_argument("--inductor", nargs="+", default=[], metavar="KEY=VALUE",
                    help="torch._inductor.config settings for the compiled rows, e.g. conv_1x1_as_mm=True "
                         "coordinate_descent_tuning=True (noted in the table)")
    ap.add_argument("--profile-batches", type=int, nargs="+", default=[],
                    help="after the ADM rows at these batches, the device-time split of one step by kernel kind")
    ap.add_argument("--memory-fraction", type=float, default=0.75,
                    help="the benches' share of the GPU memory while the tests run beside them")
    ap.add_argument("--data", type=Path, default=ROOT / "data",
                    help="the embedded pipeline's outputs (after `make run`) for the label-agreement rows")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (markdown) as rows come")
    args = ap.parse_args()

    t0 = time.monotonic()
    t = Table(args.out, t0 + args.budget_s)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tests = None
    if "tests" in args.sections:
        log = (args.out.parent if args.out else Path("/tmp")) / "pytest-gpu.log"
        tests = start_gpu_tests(log, args.out.parent / "junit.xml" if args.out else None)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: the "det" rows
    set_deterministic(False)  # cuDNN benchmarks its algorithms, except in "det" rows
    if cuda:
        if tests is not None:  # leave the tests' processes their share of the card
            torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
        free, total = torch.cuda.mem_get_info()
        where = f"{torch.cuda.get_device_name(0)}, {total / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"
    print(f"bench/gpu.py on {where}; budget {args.budget_s:.0f} s", flush=True)
    t.add("machine", where, note="" if cuda else "no CUDA: tiny models on the CPU; skipped: ADM-256, DiT-XL/2 and "
          "ResNet-50 at full size, fast modes (CUDA only), the CUDA paths of the -m gpu tests")
    eager = ["reference fp32", "reference fp16", "fp32", "fp16", "bf16", "bf16+cl"]
    # compilation takes minutes on ADM-256: the compiled rows come last, after every eager figure
    order = ["adm-eager", "deviation", "dit", "resnet", "adm-compiled"]
    sections = [s for s in order if s in args.sections or s.split("-")[0] in args.sections]
    for section in sections:
        try:
            if section == "adm-eager":
                if cuda:
                    bench_adm(t, device, True, args.batches, args.steps, args.eager_modes or eager,
                                       profile_batches=tuple(args.profile_batches))
                else:
                    bench_adm(t, device, False, [2], 1, ["fp32", "reference fp32"], profile_batches=(2,))
            elif section == "adm-compiled":
                if not cuda:
                    t.add("adm-tiny", "compile", note="skipped: no CUDA (compile is timed on the GPU)")
                    continue
                # channels_last first: with the layout-keeping GroupNorm no copy is left between the
                # (NHWC-only) convolutions; then row-major, the mode measured before it, if time is left
                default = ["bf16+cl+compile"] + (["bf16+cl+compile+graphs"] if args.graphs else []) + ["bf16+compile"]
                compiled = args.compiled_modes or default
                if args.inductor:
                    set_inductor(t, args.inductor)
                bench_adm(t, device, True, args.compile_batches, args.steps, compiled,
                          describe="adm-eager" not in sections, profile_batches=tuple(args.profile_batches))
            elif section == "deviation":
                if cuda:
                    bench_deviation(t, device, True, ["bf16", "fp16"], batch=8)
                    bench_embedded_agreement(t, device, ["bf16", "fp16", "bf16+cl"], args.data)
                else:
                    t.add("deviation", "fast modes vs fp32", note="skipped: no CUDA (reduced precision is CUDA only)")
            elif section == "dit":
                bench_dit(t, device, cuda, 32 if cuda else 2, ["fp32", "bf16"] if cuda else ["fp32"])
            elif section == "resnet":
                bench_resnet(t, device, cuda)
        except Exception as err:  # noqa: BLE001 - report and go on to the next section
            t.add(section, "error", note=f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}")
    if tests is not None:
        finish_gpu_tests(t, tests, log, t.left() + 60)
    print(f"\nbench/gpu.py: {time.monotonic() - t0:.0f} s on {where}\n\n" + t.markdown(), flush=True)


if __name__ == "__main__":
    main()
