"""Learning-rate schedules: AMLR's poly-updown (3e-5 -> 5e-4 at mid-run -> 3e-5), constant."""
import pytest

from mlrb.train.schedule import lr_at


def test_poly_updown_rises_to_the_midpoint_and_returns():
    total, lo, hi = 1000, 3e-5, 5e-4
    lrs = [lr_at("poly-updown", s, total, hi, lo) for s in range(total)]
    mid = total // 2 - 1  # their global step counts from 1: step 499 is u = 1
    assert lrs[mid] == pytest.approx(hi)
    assert all(a < b for a, b in zip(lrs[:mid], lrs[1:mid + 1]))
    assert all(a > b for a, b in zip(lrs[mid:-1], lrs[mid + 1:]))
    assert lrs[0] == pytest.approx(lo + (hi - lo) * (1 / 500) ** 0.9)
    assert lrs[-1] == pytest.approx(lo)
    # Power 0.9, not linear: a quarter of the way up is above the linear ramp.
    assert lrs[249] > lo + (hi - lo) * 0.5


def test_constant_and_bad_names():
    assert lr_at("constant", 7, 10, 1e-4, 3e-5) == 1e-4
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at("cosine", 0, 10, 1e-4, 3e-5)
