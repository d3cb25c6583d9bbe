"""Inference tests run torch on one thread: the nets are tiny, and on a shared, loaded machine
two intra-op threads make a small step 10-50x slower (measured: 3.5 ms vs 170 ms)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
