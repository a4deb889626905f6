import os
import random

import pytest
import torch

# Tests run on small CPU tensors: two threads avoid oversubscribing CI's 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--shuffle", metavar="SEED", type=int, default=None,
                     help="run the test modules, and the tests within each, in an order shuffled by SEED: "
                          "checks that no test depends on another's leftovers (module fixtures still run once)")


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return None if seed is None else f"test order shuffled with --shuffle {seed}"


def pytest_collection_modifyitems(config, items):
    """``--shuffle SEED``: what pytest-randomly does (not in our package index), module by module."""
    seed = config.getoption("--shuffle")
    if seed is None:
        return
    rng = random.Random(seed)
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(modules.values())
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    items[:] = [item for group in groups for item in group]


@pytest.fixture
def tiny_unet():
    from sda.diffusion import build_unet

    torch.manual_seed(0)
    return build_unet(16, num_classes=3, block_out_channels=(8, 16), layers_per_block=1,
                      attention_levels=(False, True), norm_num_groups=4).eval()


@pytest.fixture
def scheduler():
    from sda.diffusion import make_scheduler

    return make_scheduler(1000)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    """A copy of this repository, tiny params, after a full ``dvc repro`` (every stage ran)."""
    from repo_utils import make_tiny_repo

    return make_tiny_repo(tmp_path_factory.mktemp("sda") / "repo")
