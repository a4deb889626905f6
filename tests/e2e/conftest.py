"""Fixtures of the end-to-end tests: a Prefect test server and a tiny repository after a full run."""

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (temporary database) for every test that runs a flow in-process:
    starting one takes ~40 s on a loaded 2-core machine."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    """A copy of this repository, tiny params, after a full ``dvc repro`` (every stage ran); built once
    per test run, each pytest-xdist worker has its own copy."""
    from tests.support import built_once, make_tiny_repo

    return built_once(tmp_path_factory, "tiny", make_tiny_repo)
