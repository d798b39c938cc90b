"""Speed of the input check of mlrb.fused_loss_space (check_finite=True, the default) on CPU.

Providers: ``torch`` (isfinite, ~, & mask, sum: the formulation used for other devices and
dtypes) and ``cpp`` (mlrb._C.count_nonfinite, one read of each map). Target: the C++ check
costs at most a tenth of the torch one at the paper shape, single thread.
"""
import pytest
import torch

from mlrb.bench import cases
from mlrb.loss_space import _nonfinite_counts, _nonfinite_counts_torch

PROVIDERS = {"torch": _nonfinite_counts_torch, "cpp": _nonfinite_counts}
SECONDS: dict = {}


@pytest.fixture(scope="module")
def maps():
    pred, gt, _ = cases.make_case(cases.parse_shape("paper"), "cpu", torch.float32, 0)
    mask = torch.rand(pred.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    pred.view(-1)[123] = float("nan")
    return pred, gt, mask


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_bench_check_finite(benchmark, maps, provider, masked, one_thread):
    pred, gt, mask = maps
    mask = mask if masked else None
    counts = benchmark(PROVIDERS[provider], pred, gt, mask)
    assert counts == _nonfinite_counts_torch(pred, gt, mask) and counts[1] == 0
    SECONDS[(provider, masked)] = benchmark.stats.stats.min


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_bench_check_finite_target(masked, capsys):
    if ("torch", masked) not in SECONDS or ("cpp", masked) not in SECONDS:
        pytest.skip("run with the provider benchmarks (pytest bench/test_bench_checks.py)")
    ratio = SECONDS[("cpp", masked)] / SECONDS[("torch", masked)]
    with capsys.disabled():
        print(f"\ncheck_finite {'mask' if masked else 'no mask'}: cpp / torch = {ratio:.3f}")
    assert ratio <= 0.1
