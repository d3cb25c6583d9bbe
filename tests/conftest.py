"""Test policy in one place: seeds, Pyro validation, markers."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_validate():
    """Every test starts seeded, with an empty param store and validation on."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run torch on one thread: their nets are tiny, and on a shared 2-core machine two
    intra-op threads made a small training step 10-50x slower (measured: 3.5 ms vs 170 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
