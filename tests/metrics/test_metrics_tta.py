"""Test-time augmentation helpers on toy models."""
import pytest
import torch
import torch.nn.functional as F

from mlrb.metrics import TestTimeAugmentation, flip_average, shifted_window, window_offsets


def ramp_model(x):
    """Position-dependent toy model: channel 0 times the column index (not flip invariant)."""
    return x[:, 0] * torch.arange(x.shape[-1], dtype=x.dtype)


def window_mean_model(x):
    """Constant per window (its mean), shape (B,1,h,w): exposes how windows are averaged."""
    return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])


def test_flip_average_hand_worked():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    ramp = torch.arange(3.0)
    want = 0.5 * x[:, 0] * (ramp + ramp.flip(0))  # = x * 1 for W = 3
    assert torch.equal(flip_average(ramp_model, x), want)
    sym = lambda t: t.sum(1, keepdim=True) * 2  # pointwise model: flip test changes nothing
    x = torch.rand(2, 3, 4, 5)
    assert torch.allclose(flip_average(sym, x), sym(x))


def test_window_offsets():
    assert window_offsets(1216, 352, 176) == [0, 176, 352, 528, 704, 864]
    assert window_offsets(5, 2, 2) == [0, 2, 3]
    assert window_offsets(4, 4, 3) == [0]
    with pytest.raises(ValueError):
        window_offsets(4, 5, 1)
    with pytest.raises(ValueError):
        window_offsets(4, 2, 0)


def test_shifted_window_coverage_average_hand_worked():
    # W=5, window 2x2, stride 2 -> windows at cols 0, 2, 3 with means 3, 5, 6:
    # col 0,1 -> 3; col 2 -> 5; col 3 -> (5 + 6) / 2; col 4 -> 6.
    x = torch.arange(10.0).reshape(1, 1, 2, 5)
    out = shifted_window(window_mean_model, x, window=2, stride=2)
    assert out.shape == (1, 1, 2, 5)
    assert torch.equal(out[0, 0], torch.tensor([[3.0, 3.0, 5.0, 5.5, 6.0]] * 2))


def test_shifted_window_equivariant_model_is_exact_and_default_square():
    calls = []

    def model(t):
        calls.append(tuple(t.shape[-2:]))
        return t[:, :1] * 3.0 + 1.0

    x = torch.rand(2, 3, 8, 30)
    out = shifted_window(model, x, flip=True)
    assert torch.allclose(out, model(x), atol=1e-6)
    calls.pop()
    assert set(calls) == {(8, 8)}  # square windows of side H, 2 calls (flip) per window
    assert len(calls) == 2 * len(window_offsets(30, 8, 4))
    tall = torch.rand(1, 1, 12, 5)  # windows slide along the longer (vertical) side
    assert torch.allclose(shifted_window(model, tall), model(tall), atol=1e-6)


def test_low_resolution_output_is_resized():
    half = lambda t: F.avg_pool2d(t[:, :1], 2)[:, 0]  # (B, h/2, w/2)
    x = torch.full((1, 3, 8, 20), 2.5)
    out = shifted_window(half, x)
    assert out.shape == (1, 8, 20) and torch.allclose(out, torch.full_like(out, 2.5))


def test_wrapper_and_errors():
    x = torch.rand(1, 3, 6, 10)
    assert torch.equal(TestTimeAugmentation(ramp_model, flip=False)(x), ramp_model(x))
    assert torch.equal(TestTimeAugmentation(ramp_model)(x), flip_average(ramp_model, x))
    sw = TestTimeAugmentation(ramp_model, flip=True, shifted_window=True, window=6, stride=2)
    assert torch.equal(sw(x), shifted_window(ramp_model, x, window=6, stride=2, flip=True))
    net = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        assert TestTimeAugmentation(net, shifted_window=True)(x).shape == (1, 1, 6, 10)
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        flip_average(ramp_model, torch.rand(3, 6, 10))
    with pytest.raises(TypeError):
        flip_average(lambda t: (t,), x)
    with pytest.raises(ValueError):
        shifted_window(ramp_model, x, window=(7, 7))
