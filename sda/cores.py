"""How busy this machine's cores are, without importing torch (``tasks/__init__`` asks before
OpenMP starts)."""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["busy_cores", "choose_wait_policy", "free_cores"]


def _percent_busy(sample_s: float) -> list[float] | None:
    """Per-core busy % over ``sample_s`` seconds; ``None`` without psutil or a readable /proc."""
    try:
        import psutil

        return psutil.cpu_percent(interval=sample_s, percpu=True)
    except Exception:
        return None


def busy_cores(sample_s: float = 0.1) -> int:
    """Cores at least 50 % busy over ``sample_s`` seconds (0 when it cannot be measured)."""
    busy = _percent_busy(sample_s)
    return 0 if busy is None else sum(1 for b in busy if b >= 50.0)


def free_cores(sample_s: float = 0.3) -> int:
    """Cores of this process's affinity set that are idle now (< 50 % busy over ``sample_s``), at
    least 1; the whole affinity set when it cannot be measured.

    Measured rather than assumed: with more torch threads than free cores, OpenMP spin-waits and
    training runs many times slower (docs/method.md, the embedded domain).
    """
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = _percent_busy(sample_s)
    if busy is None:
        return max(1, allowed)
    return max(1, min(allowed, sum(1 for b in busy if b < 50.0)))


def choose_wait_policy(env: MutableMapping[str, str] = os.environ) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` in ``env`` when cores are busy now and no policy is set.

    runtime.threads is fixed (the bytes depend on it), so a stage may start with fewer idle cores
    than threads; OpenMP's spinning waits then make training 3-12x slower (docs/method.md, "The
    embedded domain"). Passive waits cost ~15 % on an idle machine and remove that; same bytes either
    way. OpenMP reads it when torch loads, so a stage command sets it first (``tasks/__init__``)."""
    if "OMP_WAIT_POLICY" not in env and busy_cores():
        env["OMP_WAIT_POLICY"] = "PASSIVE"
