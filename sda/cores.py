"""How busy this machine's cores are, without importing torch (``tasks/__init__`` asks before
OpenMP starts)."""

from __future__ import annotations

import os

__all__ = ["busy_cores", "free_cores"]


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
