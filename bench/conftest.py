"""Fixtures shared by the benchmarks."""
import pytest
import torch


@pytest.fixture
def one_thread():
    # Single-threaded: the target must hold without intra-op parallelism, and on a busy
    # shared machine oversubscribed OpenMP threads only add noise.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
