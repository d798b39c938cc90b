import pytest
import torch

from mlrb.models import RelativeDepthNet, build_relative_model
from mlrb.relative import RELATIVE_NAMES, relative_shapes


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_relative_model("resnet18", n_d=32).eval()


def test_output_shapes_per_scale(net):
    assert isinstance(net, RelativeDepthNet) and tuple(net.decoders) == RELATIVE_NAMES
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 96))
    assert tuple(out) == RELATIVE_NAMES
    for name, (h, w) in relative_shapes(64, 96).items():
        assert out[name].shape == (2, 1, h, w), name
    # the decoder of scale k up-samples 5 - k times: 2x3 features -> 16x24 at k = 2, 2x3 at k = 5
    assert out["M17@2"].shape[-2:] == (16, 24) and out["c@5"].shape[-2:] == (2, 3)
    ups = {k: sum(b.upsample for b in net.decoders[f"r@{k}"].blocks) for k in (2, 3, 4, 5)}
    assert ups == {2: 3, 3: 2, 4: 1, 5: 0}


def test_odd_size_and_backward(net):
    out = net.train()(torch.rand(1, 3, 50, 70))
    for name, (h, w) in relative_shapes(50, 70).items():
        assert out[name].shape == (1, 1, h, w)
    sum(v.sum() for v in out.values()).backward()
    assert net.decoders["M5@4"].conv_out.weight.grad is not None
    with pytest.raises(ValueError, match="RGB"):
        net(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="n_d"):
        build_relative_model("resnet18", n_d=48)
