"""Peak memory of every stage at 1x and 10x the data: does memory follow the data or the batch?

Builds two copies of the repository with ``profile: imagenet`` over a generated ImageNet-like
folder set (``--side`` px JPEGs, 3 classes, ImageNet-C layout for two corruptions, ImageNet-W
rendered) and tiny random-weight models (the same code path as the paper's models), at
``--per-class`` and 10x that many images per class (and 10x the synthetic set), then runs each
stage as ``python -m tasks.<stage>`` and samples the memory of its process tree (the stage and its
loader workers; proportional set size, so pages the forked workers share count once) every 100 ms.
Prints one table: peak memory per stage at 1x and 10x, the ratio, and peak GPU memory from the
stage's own log line on CUDA. Only the stage's processes are measured; run nothing heavy beside it.

    python bench/memory.py                     # 1x = 4 images per class, 256 px
    python bench/memory.py --per-class 20 --side 256
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import IMAGENET_CORRUPTIONS, copy_repo, make_imagenet_assets, subprocess_env  # noqa: E402
from tasks import STAGES  # noqa: E402

# tiny ADM at full resolution: one cheap guided step per image keeps the 10x run short on a CPU
ADM_MEMORY = {"image_size": 256, "num_channels": 32, "num_res_blocks": 1, "num_head_channels": 32,
              "attention_resolutions": "32", "channel_mult": "1,1,2,2", "learn_sigma": True,
              "resblock_updown": True, "use_scale_shift_norm": True, "class_cond": False}


def make_repo(root: Path, per_class: int, side: int) -> Path:
    """A repository copy with the ImageNet profile over generated data, ready to run stage by stage."""
    root.mkdir(parents=True)
    inet = make_imagenet_assets(root, per_class=per_class, side=side)
    import torch
    from diffusers import UNet2DModel

    from sda.models.adm import adm_unet_config, diffusers_to_adm_state_dict

    torch.manual_seed(0)
    unet = UNet2DModel(**adm_unet_config(**ADM_MEMORY))
    torch.save(diffusers_to_adm_state_dict(unet.state_dict(), **ADM_MEMORY), root / "models" / "adm.pt")
    inet.update(adm_flags=ADM_MEMORY, images_per_class=None, image_size=256, resize_size=256, crop_size=224)
    profile = {
        "synth_generate": {"per_class": per_class, "steps": 2, "batch_size": 8, "shard_size": 16},
        "projection": {"respacing": 10, "N": 1, "D": 4, "scale": 6.0, "batch_size": 8},
        # batches smaller than the 1x sets (12 images), so both scales run full batches: memory that
        # follows the batch size is the same at 1x and 10x, and only data-sized memory shows in the ratio
        "classifier_align": {"recipe": "custom", "optimizer": "sgd", "epochs": 1, "batch_size": 8,
                             "shuffle_buffer": 32},
        "target_data": {"corruptions": IMAGENET_CORRUPTIONS, "shard_maxcount": 16},
        "source_model": {"arch": "resnet18"},
        "evaluate": {"batch_size": 8},
    }
    copy_repo(root, {"profile": "imagenet", "imagenet": inet, "profiles": {"imagenet": profile}}, git=False)
    return root


def run_stage(repo: Path, stage: str) -> tuple[float, float | None, float]:
    """(peak PSS of the stage's process tree in MiB, peak GPU GiB from its log or None, seconds)."""
    env = {**subprocess_env(), "SDA_LOG_LEVEL": "INFO"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                # PSS: pages shared with the forked loader workers are counted once, not per process
                rss = sum(q.memory_full_info().pss for q in [p, *p.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    err = proc.communicate()[1]
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed ({proc.returncode}):\n{err[-3000:]}")
    gpu = re.search(r"peak GPU memory ([0-9.]+) GiB", err)
    return peak[0] / 2**20, float(gpu.group(1)) if gpu else None, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=4, help="images per class at 1x (3 classes)")
    ap.add_argument("--side", type=int, default=256, help="side of the generated JPEGs in pixels")
    ap.add_argument("--scale", type=int, default=10)
    args = ap.parse_args()
    results: dict[int, dict[str, tuple]] = {}
    with tempfile.TemporaryDirectory(prefix="sda-memory-") as tmp:
        for k in (1, args.scale):
            repo = make_repo(Path(tmp) / f"x{k}", args.per_class * k, args.side)
            runtime = yaml.safe_load((repo / "params.yaml").read_text())["runtime"]
            results[k] = {}
            for stage in STAGES:
                results[k][stage] = run_stage(repo, stage)
                rss, gpu, sec = results[k][stage]
                print(f"  {k}x {stage}: {rss:.0f} MiB peak memory (PSS), {sec:.1f} s", flush=True)
    n1, n10 = 3 * args.per_class, 3 * args.per_class * args.scale
    print(f"\nbench/memory.py: {n1} vs {n10} images per domain ({args.side} px JPEGs -> 256 px), "
          f"torch threads {runtime['threads']}, loader workers {runtime['loader_workers']}, "
          f"on {os.cpu_count()} CPUs\n")
    x = f"{args.scale}x"
    print(f"| stage | peak memory 1x (MiB) | peak memory {x} (MiB) | {x} / 1x | peak GPU GiB 1x / {x} |")
    print("|---|---|---|---|---|")
    for stage in STAGES:
        (r1, g1, _), (r10, g10, _) = results[1][stage], results[args.scale][stage]
        gpu = f"{g1:.2f} / {g10:.2f}" if g1 is not None and g10 is not None else "(CPU)"
        print(f"| {stage} | {r1:.0f} | {r10:.0f} | {r10 / r1:.2f} | {gpu} |")


if __name__ == "__main__":
    main()
