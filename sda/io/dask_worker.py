"""``python -m sda.io.dask_worker SCHEDULER [dask worker options]``: ``dask worker`` started with the
settings that keep the heavy stages' torch jobs at full speed (``sda.io.cluster.DASK_WORKER_CONFIG``:
no malloc tunable in the worker's environment, no 10 ms statistical profiler). Every option of
``dask worker`` works the same, e.g.::

    python -m sda.io.dask_worker tcp://HOST:8786 --nworkers 2 --nthreads 1

A plain ``dask worker`` runs the same jobs, up to 2x slower on the CPU; the stage then logs a
warning naming its workers.
"""

from __future__ import annotations

import dask

from sda.io.cluster import DASK_WORKER_CONFIG


def main() -> None:
    from distributed.cli.dask_worker import main as dask_worker

    # set in this (the nannies') process: each nanny reads its pre-spawn environment here and hands
    # its config to the worker process it starts
    dask.config.set(DASK_WORKER_CONFIG)
    dask_worker(prog_name="python -m sda.io.dask_worker")


if __name__ == "__main__":
    main()
