"""Images/s of the heavy stages' shard jobs in this process and through dask, all in one run.

Settings (k = this machine's cores): in-process with k torch threads; one dask worker process with
k threads; one worker with 1 thread; two workers with 1 thread each. For each job kind
(``generate``: synth_generate's class-conditional sampling; ``project``: synth_align's DDA
projection) it prints images/s per setting and the two ratios the distributed path must meet:

    1 worker (k threads) / in-process (k threads)    goal >= 0.9
    2 workers / 1 worker (1 thread each)              goal >= 1.8

and whether every setting wrote the same shard bytes. Cluster start-up is timed apart (printed),
not counted in images/s; the model load in each worker is counted. For scale, it also times one and
two plain processes (no dask) on the same jobs: this machine's own two-process scaling, the
ceiling of dask's. ``--stock-dask`` starts the workers with dask's default settings (before the
fix: malloc tunable, 10 ms profiler) for comparison.

The model is data/diffusion_finetune when it exists, else random weights of params.yaml's
architecture (speed does not depend on the weights), so this runs on a fresh clone.

    python bench/dask_scaling.py                         # both jobs, 240 images each
    python bench/dask_scaling.py --job project --images 120 --stock-dask
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import torch

from sda.config import load_params
import sda.domains  # noqa: F401  (the domains' params sections)
from sda.io.cluster import dask_client
from sda.io.resumable_jobs import plan_jobs, run_shard_jobs
from sda.io.shards import read_manifest
from sda.method.projector import project_job, projection_jobs
from sda.method.synth import generate_job
from sda.models.diffusion import DiffusionInfo, build_unet, save_diffusion
from sda.models.schedulers import ddpm_scheduler
from sda.layout import DATA


def _model_dir(tmp: Path) -> str:
    trained = DATA / "diffusion_finetune"
    if (trained / "info.json").is_file():
        return str(trained)
    p = load_params()
    d = p.diffusion_finetune
    torch.manual_seed(0)
    unet = build_unet(p.embedded.image_size, 10, d.block_out_channels, d.layers_per_block, d.attention_levels,
                      d.norm_num_groups).eval()
    out = tmp / "diffusion"
    save_diffusion(out, unet, ddpm_scheduler(num_train_timesteps=d.num_train_timesteps), DiffusionInfo(num_classes=10, null_label=10))
    return str(out)


@contextlib.contextmanager
def _cluster(workers: int, stock: bool):
    with dask_client(workers, worker_config={} if stock else None) as client:
        client.run(lambda: __import__("sda.method.synth"))  # imports done before the clock starts
        yield client


def _plain(out: Path, jobs, make, threads: int, barrier) -> None:
    """One plain process (no dask) running ``jobs``, started in step with the others."""
    torch.set_num_threads(threads)
    barrier.wait()
    run_shard_jobs(out, jobs, make, plan={}, threads=threads, deterministic=True, desc=f"plain {out.name}")


def _plain_rate(k: int, make, jobs, images: int, tmp: Path) -> float:
    """Images/s of ``k`` plain single-threaded processes sharing the jobs round-robin (start-up and
    imports before the clock): this machine's own scaling for the job, the ceiling for dask's."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(k + 1)
    procs = [ctx.Process(target=_plain, args=(tmp / f"plain{k}-{i}", jobs[i::k], make, 1, barrier)) for i in range(k)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError("a plain process failed")
    return images / (time.perf_counter() - t0)


def _shas(d: Path) -> list[str]:
    return [s["sha256"] for s in read_manifest(d)["shards"]]


def measure(kind: str, make, jobs, images: int, tmp: Path, cores: int, stock: bool) -> dict:
    settings = [("in-process", 0, cores), ("1 worker", 1, cores), ("1 worker", 1, 1), ("2 workers", 2, 1)]
    rows, shas = [], {}
    for label, workers, threads in settings:
        out = tmp / f"{kind}-{workers}-{threads}"
        t0 = time.perf_counter()
        with (_cluster(workers, stock) if workers else contextlib.nullcontext()) as client:
            start = time.perf_counter() - t0
            if not workers:
                torch.set_num_threads(threads)
            t1 = time.perf_counter()
            run_shard_jobs(out, jobs, make, plan={}, client=client, threads=threads, deterministic=True,
                           desc=f"{kind} {label} x{threads}")
            rate = images / (time.perf_counter() - t1)
        rows.append((label, threads, rate, start if workers else None))
        shas[(workers, threads)] = _shas(out)
    plain = {k: _plain_rate(k, make, jobs, images, tmp / kind) for k in (1, 2)}
    print(f"\n{kind}: {images} images, {len(jobs)} shards, {cores} core(s), "
          f"dask worker settings: {'dask defaults' if stock else 'sda.io.cluster.DASK_WORKER_CONFIG'}")
    for label, threads, rate, start in rows:
        extra = f"  (cluster start {start:.1f} s, not counted)" if start else ""
        print(f"  {label:<10} {threads} thread(s): {rate:7.2f} images/s{extra}")
    for k, rate in plain.items():
        print(f"  {k} plain process(es), 1 thread each, no dask: {rate:7.2f} images/s")
    r = {row[:2]: row[2] for row in rows}
    ratios = {"1 worker / in-process (k threads), goal >= 0.9": r[("1 worker", cores)] / r[("in-process", cores)],
              "2 workers / 1 worker (1 thread), goal >= 1.8": r[("2 workers", 1)] / r[("1 worker", 1)],
              "this machine without dask: 2 / 1 plain processes": plain[2] / plain[1]}
    for name, value in ratios.items():
        print(f"  {name}: x{value:.2f}")
    same = len({tuple(v) for v in shas.values()}) == 1
    print(f"  identical shards across the dask / in-process settings: {same}")
    return {"ratios": ratios, "identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", choices=["generate", "project", "both"], default="both")
    ap.add_argument("--images", type=int, default=240, help="images per job kind (default: %(default)s)")
    ap.add_argument("--shard-size", type=int, default=20)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="k (default: this machine's cores)")
    ap.add_argument("--stock-dask", action="store_true",
                    help="start the workers with dask's default settings instead of DASK_WORKER_CONFIG (before the fix)")
    args = ap.parse_args()
    p = load_params()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = _model_dir(tmp)
        gen = functools.partial(generate_job, model_dir=model_dir, seed=0, steps=p.synth_generate.steps,
                                guidance_scale=p.synth_generate.guidance_scale,
                                batch_size=min(p.synth_generate.batch_size, args.shard_size))
        gen_jobs = plan_jobs(args.images, args.shard_size, "synth")
        if args.job in ("generate", "both"):
            measure("generate", gen, gen_jobs, args.images, tmp, args.cores, args.stock_dask)
        if args.job in ("project", "both"):
            src = tmp / "project-input"
            run_shard_jobs(src, gen_jobs, gen, plan={}, desc="projection input")
            proj = functools.partial(project_job, model_dir=model_dir, src_root=str(src),
                                     projection=p.projection, seed=0, device="cpu")
            measure("project", proj, projection_jobs(src, [""]), args.images, tmp, args.cores,
                    args.stock_dask)


if __name__ == "__main__":
    main()
