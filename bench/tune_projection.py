"""Tune the DDA projection on the VAL split (never test): source-model top-1 on projected val images.

Uses the models already trained by the pipeline (data/source_model, data/diffusion_finetune) and
the val split of data/source_data, corrupted on the fly. Prints one row per setting.

    python bench/tune_projection.py --grid "batch_size=8,32,128" "scale=3,6,12" --corruptions clean gaussian_noise
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch

from sda.config import Projection, load_params
from sda.domains.corruptions import corrupt_images
from sda.io.images import to_uint8, to_unit_range
from sda.io.shards import load_shards
from sda.method.dda import project
from sda.models.classifiers import load_classifier
from sda.models.diffusion import load_diffusion
from sda.runtime import derive_seed, set_threads
from sda.layout import DATA


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", nargs="*", default=[], help="key=v1,v2,... over projection params")
    ap.add_argument("--corruptions", nargs="+", default=["clean", "gaussian_noise", "pixelate", "snow"])
    ap.add_argument("--limit", type=int, default=180, help="val images per domain")
    args = ap.parse_args()
    params = load_params()
    set_threads(params.runtime.threads)
    val = load_shards(DATA / "source_data" / "val")
    src = load_classifier(DATA / "source_model")
    if params.projection.method == "distilled":
        sys.exit("projection.method: distilled has nothing to tune here (its student is trained for one setting by "
                 "synth_align): tune its teacher's settings with method dda or ilvr")
    unet, sched, info = load_diffusion(DATA / "diffusion_finetune")
    images, labels = val.images[: args.limit], val.labels[: args.limit]
    domains = {c: images if c == "clean" else corrupt_images(images, c, 5, derive_seed(99, c)) for c in args.corruptions}
    grid = {k: [type(getattr(params.projection, k))(v) if not isinstance(getattr(params.projection, k), bool)
                else v.lower() == "true" for v in vs.split(",")]
            for k, vs in (g.split("=") for g in args.grid)}
    keys = list(grid)
    print("setting".ljust(50), " ".join(f"{c[:10]:>10}" for c in args.corruptions), "  mean  img/s")
    for combo in itertools.product(*grid.values()) if grid else [()]:
        p = Projection(**{**params.projection.model_dump(), **dict(zip(keys, combo))})  # validated
        accs, t0, n = [], time.perf_counter(), 0
        for c, imgs in domains.items():
            out = []
            for b in range(0, len(imgs), p.batch_size):
                x = to_unit_range(imgs[b: b + p.batch_size])
                y = project(unet, sched, x, p, class_labels=torch.full((len(x),), info.null_label),
                            generator=torch.Generator().manual_seed(b))
                out.append(to_uint8(y))
                n += len(x)
            pred = src.logits(np.concatenate(out)).argmax(1).numpy()
            accs.append(100 * (pred == labels).mean())
        name = ", ".join(f"{k}={v}" for k, v in zip(keys, combo)) or "params.yaml"
        print(name.ljust(50), " ".join(f"{a:10.1f}" for a in accs), f"{np.mean(accs):6.1f}",
              f"{n / (time.perf_counter() - t0):6.0f}", flush=True)


if __name__ == "__main__":
    main()
