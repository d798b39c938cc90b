"""Test-wide setup.

Triton kernels are exercised on CPU tensors through the Triton interpreter when no GPU is
present; TRITON_INTERPRET must be set before anything imports triton, hence here.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _inductor_cache_per_extension_build() -> None:
    """Inductor's on-disk cache (shared by every run on a machine) is keyed by the graph, not
    by the custom ops' fake implementations: code compiled against an older build of mlrb._C
    (say, another shape of an op's output) could be replayed. Each build gets its own cache."""
    import hashlib
    import importlib.util

    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:  # the user's choice (read before inductor sets it)
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    spec = importlib.util.find_spec("mlrb._C")
    if spec is None or not spec.origin:
        return
    with open(spec.origin, "rb") as f:
        build = hashlib.sha256(f.read()).hexdigest()[:12]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), f"mlrb-{build}")


_inductor_cache_per_extension_build()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny-tensor tests: faster than two, and on a busy
    shared machine no OpenMP threads spin against other processes. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
