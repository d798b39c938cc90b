"""Recipe augmentations: rotation (depth never interpolated, borders masked) and random crops."""
import pytest
import torch

from mlrb.train.transforms import Chain, RandomCrop, RandomRotation, rotation_grid


def sample(h=12, w=16):
    depth = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w)
    return {"image": torch.rand(3, h, w), "depth": depth, "mask": torch.ones(1, h, w, dtype=torch.bool)}


def test_quarter_turn_is_an_exact_permutation():
    s = sample(8, 8)
    grid = rotation_grid(8, 8, 90.0)
    out = torch.nn.functional.grid_sample(s["depth"][None], grid, mode="nearest", align_corners=False)[0]
    assert torch.equal(out, torch.rot90(s["depth"], 1, dims=(-2, -1)))  # counter-clockwise


def test_rotation_keeps_depth_values_and_masks_the_border():
    s = sample()
    out = RandomRotation(5.0)(s, torch.Generator().manual_seed(3))
    assert out["depth"].shape == s["depth"].shape and out["image"].shape == s["image"].shape
    valid = out["mask"]
    # Nearest: every supervised depth is one of the measured values, never a blend.
    assert torch.isin(out["depth"][valid], s["depth"]).all()
    assert (out["depth"][~valid] == 0).all() or not (~valid).any()
    # Larger rotations bring pixels in from outside the frame: masked out.
    masks = [RandomRotation(30.0)(s, torch.Generator().manual_seed(k))["mask"] for k in range(6)]
    assert any(not m.all() for m in masks) and all(m.any() for m in masks)
    # Holes in the mask stay holes after rotation.
    s["mask"][:, 5:7, 7:9] = False
    holed = RandomRotation(0.001)(s, torch.Generator().manual_seed(0))
    assert not holed["mask"][:, 5:7, 7:9].any()
    with pytest.raises(ValueError, match="degrees"):
        RandomRotation(float("nan"))


def test_random_crop_is_consistent_and_checks_size():
    s = sample()
    out = Chain(RandomCrop((8, 10)), None)(s, torch.Generator().manual_seed(1))
    assert out["image"].shape == (3, 8, 10) and out["depth"].shape == (1, 8, 10) and out["mask"].shape == (1, 8, 10)
    # The depth window is a contiguous block of the original (ids increase by 16 per row).
    d = out["depth"][0]
    assert torch.equal(d[1:] - d[:-1], torch.full((7, 10), 16.0))
    with pytest.raises(ValueError, match="larger than the 12x16"):
        RandomCrop((13, 10))(s, torch.Generator())
