"""CPU inference and training settings for the embedded models, timed in one run (issue 56: "CPU
inference settings (threads, channels_last, bf16 where the CPU has native bf16 and the result holds)").

The work of the heaviest stages at the embedded profile's shapes, on random inputs: a training step of
the diffusion UNet (diffusion_finetune: batch 64, 16 px, AdamW), a UNet forward + input gradient
(the DDA projection's guided step of target_project / synth_align: batch 16) and a classifier forward +
backward (the streams stage's model adaptation: batch 64). Each under: fp32 (what the stages run),
``channels_last`` memory format, and bf16 autocast. The settings are taken in turn, ``--rounds`` times,
and the median step time of each is printed with its ratio to fp32 (same run, same machine), and the
largest difference of its output from fp32's (what a setting would change in the numbers).

    python bench/cpu_settings.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sda.config import load_params  # noqa: E402
from sda.models.classifiers import create_classifier  # noqa: E402
from sda.models.diffusion import build_unet  # noqa: E402

SETTINGS = ("fp32", "channels_last", "bf16")


def _ctx(setting: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if setting == "bf16" else contextlib.nullcontext()


def _fmt(x: torch.Tensor, setting: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if setting == "channels_last" else x


def workloads(params):
    cfg = params.diffusion_finetune

    def unet():
        torch.manual_seed(0)
        return build_unet(16, 10, cfg.block_out_channels, cfg.layers_per_block, cfg.attention_levels, cfg.norm_num_groups)

    def train_unet(setting):
        g = torch.Generator().manual_seed(0)  # the same inputs under every setting
        model = unet()
        if setting == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, t, y = torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 1000, (64,), generator=g), torch.randint(0, 11, (64,), generator=g)
        noise = torch.randn(64, 3, 16, 16, generator=g)

        def step():
            with _ctx(setting):
                out = model(_fmt(x, setting), t, class_labels=y).sample
            loss = F.mse_loss(out.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    def guided_step(setting):
        g = torch.Generator().manual_seed(0)  # the same inputs under every setting
        model = unet().eval()
        if setting == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        x, t, y = torch.randn(16, 3, 16, 16, generator=g), torch.full((16,), 500), torch.full((16,), 10)

        def step():
            xi = _fmt(x.clone(), setting).requires_grad_(True)
            with _ctx(setting):
                out = model(xi, t, class_labels=y).sample
            (grad,) = torch.autograd.grad(out.float().square().sum(), xi)
            return grad
        return step

    def classifier_step(setting):
        g = torch.Generator().manual_seed(0)  # the same inputs under every setting
        torch.manual_seed(0)
        model = create_classifier(params.source_model.arch, 10, **({"width": params.source_model.width}
                                                                  if params.source_model.arch == "sda_cnn3" else {}))
        if setting == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        x = torch.randn(64, 3, 16, 16, generator=g)

        def step():
            torch.manual_seed(1)  # dropout's draws: the same under every setting
            with _ctx(setting):
                logits = model(_fmt(x, setting))
            loss = -(logits.float().softmax(1) * logits.float().log_softmax(1)).sum(1).mean()  # entropy (Tent)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return logits.detach().float()
        return step

    return {"diffusion_finetune: UNet train step (batch 64)": train_unet,
            "projection: UNet forward + input gradient (batch 16)": guided_step,
            "streams: classifier forward + backward (batch 64)": classifier_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="times each setting is timed, in turn (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timing (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the stages' runtime.threads; default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params("params.yaml")
    print(f"torch {torch.__version__}, {args.threads} threads; bf16 autocast on CPU "
          f"({'native' if torch.backends.mkldnn.is_available() and 'avx512_bf16' in Path('/proc/cpuinfo').read_text() else 'emulated'})")
    for name, make in workloads(params).items():
        steps = {s: make(s) for s in SETTINGS}
        first = {s: steps[s]() for s in SETTINGS}  # warm-up, and the first output of each
        times = {s: [] for s in SETTINGS}
        for _ in range(args.rounds):
            for s in SETTINGS:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    steps[s]()
                times[s].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times["fp32"])
        print(name)
        for s in SETTINGS:
            med = statistics.median(times[s])
            diff = (first[s].float() - first["fp32"].float()).abs().max().item()
            print(f"  {s:<14} {med * 1000:8.1f} ms/step  x{base / med:5.2f} vs fp32   max |output - fp32| {diff:.2e}")


if __name__ == "__main__":
    main()
