"""The fused backends are there. The backend tests (test_ops_contract.py, test_ops_cpu.py,
test_ops_triton.py) fail too when their backend cannot run (ops_cases.require_backend);
these two say so in one line each, before any kernel is called.

Platforms without a C++ compiler set MLRB_NO_CPU_EXT=1 to skip the cpu check; those without
triton (it is a dependency on Linux only) skip the triton check by platform, or set
MLRB_NO_TRITON=1.
"""
import os
import sys

import pytest
import torch


@pytest.mark.skipif(os.environ.get("MLRB_NO_CPU_EXT") == "1", reason="MLRB_NO_CPU_EXT=1: no C++ extension wanted")
def test_cpu_backend_is_available():
    from mlrb.ops import cpu

    assert cpu.unavailable_reason(torch.device("cpu")) is None, cpu.unavailable_reason(torch.device("cpu"))
    from mlrb import loss_space

    assert loss_space.available_backends("cpu")[0] == "cpu"


@pytest.mark.skipif(os.environ.get("MLRB_NO_TRITON") == "1", reason="MLRB_NO_TRITON=1: no triton wanted")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="triton is a dependency on Linux only")
def test_triton_backend_is_available():
    from mlrb.ops import triton as triton_backend

    # tests/conftest.py runs the kernels under the interpreter when there is no GPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert triton_backend.unavailable_reason(device) is None, triton_backend.unavailable_reason(device)
