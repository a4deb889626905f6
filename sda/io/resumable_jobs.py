"""Resumable, distributed shard jobs: the one machinery behind the heavy stages
(``synth_generate``, ``synth_align``, ``target_project``).

A job list is fixed by the params alone: job ``i`` always produces the same shard (same keys, same
bytes), whichever worker runs it and whenever. Progress lives in a work directory:

- each shard is written to a temporary name by a worker and renamed when complete;
- ``progress.json`` (rewritten atomically after every finished shard) records the plan's
  fingerprint and, per finished shard, its sample count, bytes, sha256, class counts and seconds
  (a work file: ``tasks.common.run_resumable`` publishes the set without it and its timings);
- on restart the recorded shards are verified against the files (size + sha256); missing, corrupt
  or unrecorded files are removed and redone, so no key is ever written twice;
- a work directory whose fingerprint differs from the plan is refused, never mixed.

When every job is done, :func:`run_shard_jobs` writes an ordinary shard-set ``manifest.json`` per
output sub-directory (see :mod:`sda.io.shards`), so readers do not care how the set was made. The
manifests hold content only (counts, sizes, hashes, the plan's meta): the same plan gives the same
manifest bytes, so a re-run leaves the DVC out hash unchanged; timings go to the returned summary.

Execution: ``workers=0`` runs in this process; ``workers >= 1`` starts a dask ``LocalCluster`` of
that many single-threaded worker processes (:func:`sda.io.cluster.dask_client`); a scheduler
address (argument or ``SDA_DASK_SCHEDULER``) submits to an existing cluster instead. Job functions
must be picklable (module-level functions, or ``functools.partial`` of them) and should load their
models once per process (``functools.cache`` on the loader).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from sda.io.atomic import atomic_file, atomic_write_json, clean_stale_temps, sha256_file
from sda.io.cluster import SCHEDULER_ENV, dask_client
from sda.io.shards import MANIFEST, Sample, make_manifest, shard_record
from sda.provenance import fingerprint

__all__ = [
    "PROGRESS",
    "PlanMismatchError",
    "ShardJob",
    "jobs_fingerprint",
    "plan_jobs",
    "run_shard_jobs",
    "write_shard",
]

PROGRESS = "progress.json"


class PlanMismatchError(ValueError):
    """A work directory holds shards of another plan (other params); it is refused, not mixed."""


@dataclass(frozen=True)
class ShardJob:
    """One output shard: ``name`` (relative path, may include a sub-directory) and the global index
    range ``[start, stop)`` of the items it holds; ``extra`` carries job-specific data (JSON-able)."""

    name: str
    start: int
    stop: int
    extra: tuple[tuple[str, Any], ...] = ()


def plan_jobs(n_items: int, shard_size: int, prefix: str) -> list[ShardJob]:
    """Contiguous index ranges of ``shard_size`` items: ``<prefix>-000000.tar``, ... ."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [ShardJob(f"{prefix}-{i // shard_size:06d}.tar", i, min(i + shard_size, n_items))
            for i in range(0, n_items, shard_size)]


def jobs_fingerprint(plan: Any, jobs: list[ShardJob]) -> str:
    """The identity of a run: what fixes the output (``plan``) and the job list."""
    return fingerprint({"plan": plan, "jobs": [asdict(j) for j in jobs]})


def write_shard(path: Path, samples: Iterable[Sample], max_bytes: float = float("inf")) -> dict[str, Any]:
    """Write one shard atomically (:func:`sda.io.atomic.atomic_file`); return its progress entry. A
    generator's return value (what the job counted, a dict of numbers) is kept in it as ``stats``."""
    classes: Counter[int] = Counter()
    keys: set[str] = set()
    stats = None
    t0 = time.perf_counter()
    import webdataset as wds  # imports torch: not at the top (sda.io.shards)

    with atomic_file(path) as tmp:
        with wds.TarWriter(str(tmp), mtime=0.0) as sink:  # fixed mtime: same samples, same bytes
            it = iter(samples)
            while True:
                try:
                    s = next(it)
                except StopIteration as end:
                    stats = end.value
                    break
                sink.write(shard_record(s, keys, where=f"shard {path.name}"))
                classes[int(s.label)] += 1
        size = tmp.stat().st_size
        if size > max_bytes:
            raise ValueError(f"shard {path.name} is {size} bytes, over the cap of {int(max_bytes)}: "
                             "lower the shard size")
    return {"count": len(keys), "bytes": size, "sha256": sha256_file(path),
            "classes": {str(k): v for k, v in sorted(classes.items())},
            "seconds": round(time.perf_counter() - t0, 3), **({"stats": stats} if stats else {})}


def _do_job(make_samples: Callable[[ShardJob], Iterable[Sample]], work_dir: str, job: ShardJob,
            max_bytes: float, threads: int = 0, deterministic: bool | None = None) -> tuple[str, dict[str, Any]]:
    if deterministic is not None:
        # process-wide, and a dask worker is a process of its own: set where the job runs
        from sda.runtime import set_deterministic

        set_deterministic(deterministic)
    if threads:
        # Set in the thread that runs the job: OpenMP's thread count is per calling thread, and
        # dask's nanny starts workers with OMP_NUM_THREADS=1.
        import torch

        torch.set_num_threads(threads)
    entry = write_shard(Path(work_dir) / job.name, make_samples(job), max_bytes)
    if entry["count"] != job.stop - job.start:
        raise RuntimeError(f"job {job.name} produced {entry['count']} samples, expected {job.stop - job.start}")
    return job.name, entry


def _load_progress(work_dir: Path, fp: str, jobs: list[ShardJob]) -> dict[str, dict[str, Any]]:
    """Verified finished shards; removes every file that is not one of them."""
    path = work_dir / PROGRESS
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        progress = json.loads(path.read_text())
        if progress.get("fingerprint") != fp:
            raise PlanMismatchError(
                f"{work_dir} holds shards of another plan (fingerprint {str(progress.get('fingerprint'))[:12]}, "
                f"these params give {fp[:12]}): refusing to mix them. Remove {work_dir} to start over, "
                "or restore the params it was made with."
            )
        names = {j.name for j in jobs}
        for name, e in progress.get("shards", {}).items():
            f = work_dir / name
            if name in names and f.is_file() and f.stat().st_size == e["bytes"] and sha256_file(f) == e["sha256"]:
                done[name] = e
    keep = {work_dir / n for n in done} | {path}
    for f in sorted(work_dir.rglob("*")):
        if f.is_file() and f not in keep:  # temporaries, unrecorded or corrupt shards, stale manifests
            f.unlink()
    return done


def _save_progress(work_dir: Path, fp: str, meta: dict[str, Any], done: dict[str, dict[str, Any]],
                   total: int) -> None:
    atomic_write_json(work_dir / PROGRESS, {"fingerprint": fp, "meta": meta, "jobs": total,
                                            "shards": dict(sorted(done.items()))})


def run_shard_jobs(
    work_dir: str | os.PathLike[str],
    jobs: list[ShardJob],
    make_samples: Callable[[ShardJob], Iterable[Sample]],
    *,
    plan: Any,
    meta: dict[str, Any] | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    max_bytes: float = float("inf"),
    desc: str = "shards",
    client: Any = None,
    threads: int | None = None,
    deterministic: bool | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``jobs`` into ``work_dir``; returns the summary with timings (``seconds``,
    ``items_per_s`` and ``shard_seconds`` per shard), which never go into the shards or manifests.

    ``plan`` is anything JSON-able that fixes the output (params, input hashes); with the job list
    it forms the fingerprint that a resumed run must match. When all shards exist, a ``manifest.json``
    is written in every sub-directory that holds shards.

    Where jobs run: in this process (``workers=0``, no scheduler, no client), on a new local cluster
    of ``workers`` processes, on the cluster at ``scheduler``, or through ``client`` (an open dask
    ``Client``, left open). ``threads`` sets torch's threads in each job (default: for a new local
    cluster the cores shared out between its workers; otherwise left as the worker has it).
    ``deterministic`` sets ``torch.use_deterministic_algorithms`` where each job runs (``None``:
    left as it is): the same bytes from every worker and thread count.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique")
    fp = jobs_fingerprint(plan, jobs)
    meta = dict(meta or {})
    done = _load_progress(work_dir, fp, jobs)
    todo = [j for j in jobs if j.name not in done]
    total_items = sum(j.stop - j.start for j in jobs)
    resumed = total_items - sum(j.stop - j.start for j in todo)
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    t0 = time.perf_counter()
    bar = tqdm(total=total_items, initial=resumed, desc=desc, unit="img", smoothing=0.1)
    run = functools.partial(_do_job, make_samples, str(work_dir))

    def finished(name: str, entry: dict[str, Any]) -> None:
        done[name] = entry
        _save_progress(work_dir, fp, meta, done, len(jobs))
        bar.update(entry["count"])

    _save_progress(work_dir, fp, meta, done, len(jobs))
    if todo and workers == 0 and not scheduler and client is None:
        for job in todo:
            finished(*run(job, max_bytes, threads or 0, deterministic))
    elif todo:
        _run_on_dask(todo, functools.partial(run, max_bytes=max_bytes, deterministic=deterministic), finished,
                     workers=workers, scheduler=scheduler, client=client, threads=threads, key=f"{desc}-{fp[:8]}")
    # a worker killed while writing leaves its temporary; the job was re-run elsewhere
    clean_stale_temps(work_dir, recursive=True)
    bar.close()
    seconds = time.perf_counter() - t0
    new_items = total_items - resumed
    _write_manifests(work_dir, jobs, done, meta)
    stats: dict[str, float] = {}
    for e in done.values():  # every job's, resumed ones included: the work of the whole set
        for k, v in (e.get("stats") or {}).items():
            stats[k] = stats.get(k, 0) + v
    summary = {"shards": len(jobs), "resumed_shards": len(jobs) - len(todo), "items": total_items,
               "new_items": new_items, "seconds": round(seconds, 2), **({"stats": stats} if stats else {}),
               "items_per_s": round(new_items / seconds, 2) if seconds > 0 else None,
               "shard_seconds": {j.name: done[j.name].get("seconds") for j in jobs}}
    tqdm.write(f"{desc}: {len(todo)} shard(s) written, {len(jobs) - len(todo)} resumed; {new_items} images "
               f"in {seconds:.1f} s ({summary['items_per_s']} img/s)")
    return summary


def _run_on_dask(todo: list[ShardJob], run: Callable[..., tuple[str, dict[str, Any]]],
                 finished: Callable[[str, dict[str, Any]], None], *, workers: int, scheduler: str | None,
                 client: Any, threads: int | None, key: str) -> None:
    """Submit every job to ``client`` (or a new cluster, closed after), ``finished`` as each returns."""
    from distributed import as_completed

    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(max(1, workers), scheduler))
            if threads is None and not scheduler:  # our local cluster: share the cores out
                threads = max(1, (os.cpu_count() or 1) // (len(client.scheduler_info()["workers"]) or 1))
        futures = [client.submit(run, job, threads=threads or 0, key=f"{key}-{job.name}", pure=False) for job in todo]
        for fut in as_completed(futures):
            finished(*fut.result())


def _write_manifests(work_dir: Path, jobs: list[ShardJob], done: dict[str, dict[str, Any]],
                     meta: dict[str, Any]) -> None:
    """An ordinary shard-set manifest per sub-directory (``sda.io.shards`` format, content only)."""
    groups: dict[str, list[ShardJob]] = {}
    for j in jobs:
        groups.setdefault(str(Path(j.name).parent), []).append(j)
    for sub, group in groups.items():
        classes: Counter[int] = Counter()
        shards = []
        for j in group:
            e = done[j.name]
            classes.update({int(k): v for k, v in e["classes"].items()})
            shards.append({"name": Path(j.name).name, "count": e["count"], "bytes": e["bytes"],
                           "sha256": e["sha256"], "start": j.start, "stop": j.stop})
        atomic_write_json(work_dir / sub / MANIFEST, make_manifest(shards, classes, meta))
