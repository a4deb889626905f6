"""Throughput of synthetic generation through the shard machinery: 1 vs 2 dask workers, same run.

Uses the pipeline's trained diffusion model (data/diffusion_finetune; run `make run` first) and the
synth_generate params, on a plan of --images images. Prints images/s per setting and the 1 -> 2
worker scaling ratio, and checks that every setting wrote identical shards.

    python bench/generation.py --images 600
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

from sda.sharded import plan_jobs, run_shard_jobs
from sda.shards import read_manifest
from sda.synth import generate_job
from tasks.common import DATA, load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    p = load_params().synth_generate
    model_dir = DATA / "diffusion_finetune"
    if not (model_dir / "info.json").is_file():
        raise SystemExit(f"{model_dir} is missing: run `make run` (or `dvc repro diffusion_finetune`) first")
    make = functools.partial(generate_job, model_dir=str(model_dir), seed=0, steps=p.steps,
                             guidance_scale=p.guidance_scale, batch_size=min(p.batch_size, args.shard_size))
    jobs = plan_jobs(args.images, args.shard_size, "synth")
    rates, shas = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            t0 = time.perf_counter()
            run_shard_jobs(Path(tmp) / f"w{w}", jobs, make, plan={}, workers=w, desc=f"{w} worker(s)")
            rates[w] = args.images / (time.perf_counter() - t0)  # wall clock, cluster start-up included
            shas[w] = [s["sha256"] for s in read_manifest(Path(tmp) / f"w{w}")["shards"]]
    print(f"\n{args.images} images, {p.steps} steps, shards of {args.shard_size}")
    for w, r in rates.items():
        print(f"  workers={w}: {r:7.1f} images/s")
    if 1 in rates and 2 in rates:
        print(f"  scaling 1 -> 2 workers: x{rates[2] / rates[1]:.2f}")
    print(f"  identical shards across settings: {len({json.dumps(v) for v in shas.values()}) == 1}")


if __name__ == "__main__":
    main()
