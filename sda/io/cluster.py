"""Dask clusters for the shard jobs: a local ``LocalCluster`` (``LocalCUDACluster`` with CUDA) or
an existing scheduler, with the worker settings that keep torch jobs at full speed
(``bench/dask_scaling.py`` measures them; ``python -m sda.io.dask_worker`` starts workers with them).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

__all__ = ["DASK_WORKER_CONFIG", "SCHEDULER_ENV", "SchedulerUnreachableError", "dask_client", "worker_settings"]

log = logging.getLogger(__name__)

SCHEDULER_ENV = "SDA_DASK_SCHEDULER"


class SchedulerUnreachableError(ConnectionError):
    """The dask scheduler named by ``runtime.scheduler`` / ``SDA_DASK_SCHEDULER`` did not answer."""


# Worker settings that keep torch jobs at full speed (bench/dask_scaling.py measures them):
# - dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536. Setting any glibc malloc
#   tunable switches off malloc's dynamic mmap threshold, so every tensor over 128 KiB is mmap'd on
#   allocation and unmapped on free: ~35x the page faults, ~40% of the worker's CPU time in the
#   kernel, half the images/s. None unsets it (distributed.nanny._get_env_variables).
# - the worker's statistical profiler (every 10 ms), event-loop tick (20 ms) and system monitor
#   (500 ms) take the GIL from the job's Python-heavy UNet loop: ~14% of a worker's CPU time.
DASK_WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None, threads_per_worker: int = 1,
                worker_config: dict[str, Any] | None = None):
    """``with dask_client(...) as client``: a dask ``Client`` to the cluster at ``scheduler`` when
    given, else to a new ``LocalCluster`` of ``workers`` processes (dask-cuda's
    ``LocalCUDACluster``, one worker per GPU, when CUDA is present and it is installed), closed with
    the client. Local workers start with ``worker_config`` (default ``DASK_WORKER_CONFIG``; ``{}`` =
    dask's defaults, for the benchmark); workers of a cluster started without it (plain ``dask
    worker``) are named in a warning. Raises :class:`SchedulerUnreachableError` (naming the address)
    when the scheduler does not answer within ``distributed.comm.timeouts.connect``."""
    import dask
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # no per-worker INFO chatter in stage logs
    if scheduler:
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise SchedulerUnreachableError(
                f"no dask scheduler answered at {scheduler} within {timeout} (runtime.scheduler or "
                f"{SCHEDULER_ENV}): start it (`dask scheduler`, then `dask worker {scheduler}`), fix the address, "
                "or unset it to run locally; nothing was published") from err
        with client:
            _warn_slow_workers(client)
            yield client
        return
    with dask.config.set(DASK_WORKER_CONFIG if worker_config is None else worker_config):
        cluster = None
        import torch

        if torch.cuda.is_available():
            try:
                from dask_cuda import LocalCUDACluster

                cluster = LocalCUDACluster()
            except ImportError:
                log.warning("CUDA is here but dask-cuda is not installed (pip install -e '.[gpu]'): a CPU "
                            "LocalCluster of %d worker(s) instead of one worker per GPU", workers)
        if cluster is None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                   dashboard_address=None, silence_logs=40)
    with cluster, Client(cluster) as client:  # Client(cluster).close() alone leaves the workers running
        yield client


def worker_settings() -> dict[str, Any]:
    """Where it runs (``client.run(worker_settings)``): the values of ``DASK_WORKER_CONFIG``'s keys,
    the malloc one read from the process environment (what the worker was started with)."""
    import dask

    return {key: (os.environ.get(key.rsplit(".", 1)[1]) if ".pre-spawn-environ." in key else dask.config.get(key))
            for key in DASK_WORKER_CONFIG}


def _warn_slow_workers(client) -> None:
    settings = client.run(worker_settings)
    slow = sorted(w for w, got in settings.items() if got != DASK_WORKER_CONFIG)
    if slow:
        log.warning("%d of %d dask workers run with dask's default settings %s, which slow torch jobs down up to "
                    "2x: start them with `python -m sda.io.dask_worker <scheduler>` (%s)", len(slow), len(settings),
                    settings[slow[0]], ", ".join(slow[:4]))


