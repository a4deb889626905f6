"""What the project's code sets in torch for a whole process, put back: for tests that run that code
(a CLI's ``main()``, ``sda.runtime.set_deterministic``) in the test's own process."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_state_kept() -> Iterator[None]:
    """Restore on exit what ``sda.runtime.set_threads`` and ``set_deterministic`` change: the intra-op
    thread count, deterministic algorithms (warn-only), the NaN fill of new tensors, cuDNN's benchmark."""
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.set_num_threads(state[0])
        torch.use_deterministic_algorithms(state[1], warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = state[2]
        torch.backends.cudnn.benchmark = state[3]
