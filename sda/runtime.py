"""Run-time plumbing shared by every stage: seeds, devices, CPU threads.

Imports torch in the functions that set it: :func:`derive_seed` (read by every params check and
stage module) costs no torch import."""

from __future__ import annotations

import hashlib
import os
import random
import sys

import numpy as np

from sda.cores import free_cores

__all__ = ["derive_seed", "free_cores", "pick_device", "seed_everything", "set_deterministic", "set_threads"]


def derive_seed(seed: int, *names: object) -> int:
    """A 31-bit seed derived from a master seed and names (stage, domain, batch index, ...).

    Stable across processes and machines (sha256, not Python's salted ``hash``).
    """
    h = hashlib.sha256(repr((int(seed), *names)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    import torch

    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads and return the number used. A fixed count keeps a stage's bytes
    reproducible (CPU training reductions depend on it); 0 = :func:`free_cores`, the fastest under
    load but not reproducible."""
    import torch

    n = threads if threads > 0 else free_cores()
    torch.set_num_threads(n)
    return n


def set_deterministic(on: bool = True) -> None:
    """``torch.use_deterministic_algorithms(on)`` (warn-only: an op without a deterministic kernel
    warns rather than stops). Without it the projection differs from run to run in the last bits on
    2 CPU threads: the backward of resize_right's gather (the low-pass) accumulates in a
    thread-dependent order. cuBLAS needs its workspace config set before CUDA starts, hence the env.
    Off, cuDNN also benchmarks its convolution algorithms per shape (``cudnn.benchmark``: faster,
    and the choice, hence the last bits, may differ between runs); on, it keeps its fixed choice."""
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms does this and sets inductor's flag, importing inductor's
    # config (~1.5 s, a third of a stage's start-up, for stages that never compile). The flag is
    # set here when the config is loaded already, else by sda.accel.fast_model before it compiles.
    torch._C._set_deterministic_algorithms(on, warn_only=True)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = on
    torch.backends.cudnn.benchmark = not on
    # With deterministic algorithms on, torch also fills every new tensor with NaN (a debugging aid
    # that makes reads of uninitialised memory visible): 4-6 % of the CPU time of training, sampling
    # and projection at 16 px, more on a loaded machine; the same bytes without it (tests/unit/sda/test_runtime.py).
    torch.utils.deterministic.fill_uninitialized_memory = False


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(device)
