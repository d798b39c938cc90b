"""Test-wide setup.

Triton kernels are exercised on CPU tensors through the Triton interpreter when no GPU is
present; TRITON_INTERPRET must be set before anything imports triton, hence here.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny-tensor tests: faster than two, and on a busy
    shared machine no OpenMP threads spin against other processes. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
