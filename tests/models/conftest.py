"""Model tests run torch on one thread: their tensors are tiny, and on a busy 2-core machine
two threads spend more time waiting for each other than computing."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
