import os
import shutil
import tempfile

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of make test's workers (pytest-xdist, one per core)
    # the other workers may take a core at any moment: passive OpenMP waits (sda.cores; same bytes either
    # way), set before torch loads, for this worker and every stage process it starts (they inherit it)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # a Prefect home of its own (the temporary servers' databases), set before Prefect loads
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"sda-prefect-{os.environ['PYTEST_XDIST_WORKER']}-")

import torch  # noqa: E402

# Tests run on small CPU tensors: two threads avoid oversubscribing CI's 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def restore_determinism():
    """What sda.runtime.set_deterministic (and set_threads) change, put back after the test."""
    from tests.support.torch_state import torch_state_kept

    with torch_state_kept():
        yield


@pytest.fixture
def tiny_unet():
    from tests.support.tiny_models import tiny_unet

    return tiny_unet().eval()


@pytest.fixture
def scheduler():
    from sda.models.schedulers import ddpm_scheduler

    return ddpm_scheduler(num_train_timesteps=1000)


def pytest_unconfigure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)
