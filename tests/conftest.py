"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny forward passes: on a shared 2-core
    machine two threads spin against other jobs (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _kernel_choice_cache(tmp_path_factory):
    """Measured kernel choices go to a scratch directory, not the user's cache."""
    import os

    previous = os.environ.get("EDL_CACHE_DIR")
    os.environ["EDL_CACHE_DIR"] = str(tmp_path_factory.mktemp("edl-cache"))
    yield
    if previous is None:
        os.environ.pop("EDL_CACHE_DIR", None)
    else:
        os.environ["EDL_CACHE_DIR"] = previous
