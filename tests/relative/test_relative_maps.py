"""relative_maps against a direct float64 computation of Eq. S-2 (numpy loops over taps and
offsets, written from the spec, not from mlrb.reference), with masks."""
import numpy as np
import pytest
import torch

from mlrb.relative import RELATIVE_NAMES, disparity_maps, relative_maps

TAPS = np.array([-3 / 32, 19 / 32, 19 / 32, -3 / 32])


def direct_level(d, m, k):
    """D^k and m^k of one (H, W) map by the spec's 4-tap rule (no fallback sizes here)."""
    H, W = d.shape
    h, w = H >> k, W >> k
    assert h > 0 and w > 0
    rows = np.clip((np.arange(h) << k)[:, None] + (1 << (k - 1)) - 2 + np.arange(4), 0, H - 1)
    cols = np.clip((np.arange(w) << k)[:, None] + (1 << (k - 1)) - 2 + np.arange(4), 0, W - 1)
    out = np.zeros((h, w))
    mk = np.ones((h, w), bool)
    for a in range(4):
        for b in range(4):
            out += TAPS[a] * TAPS[b] * d[rows[:, a]][:, cols[:, b]]
            mk &= m[rows[:, a]][:, cols[:, b]]
    return out, mk


def direct_maps(depth, mask):
    """{name: (map, valid)} for one (H, W) float64 depth map."""
    floor = depth[mask].min()
    d = np.where(mask, depth, floor)
    out = {}
    for k in (2, 3, 4, 5):
        dk, mk = direct_level(d, mask, k)
        L = np.log(np.maximum(dk, floor))
        h, w = L.shape
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        for t, n in (("M17", 17), ("M5", 5)):
            r = n // 2
            s, c = np.zeros((h, w)), np.zeros((h, w))
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    i2, j2 = np.clip(ii + di, 0, h - 1), np.clip(jj + dj, 0, w - 1)
                    s += np.where(mk[i2, j2], L[i2, j2], 0.0)
                    c += mk[i2, j2]
            out[f"{t}@{k}"] = (np.where(mk, L - s / np.maximum(c, 1), 0.0), mk)
        vr = np.zeros((h, w), bool)
        vr[:, :-1] = mk[:, :-1] & mk[:, 1:]
        R = np.zeros((h, w))
        R[:, :-1] = L[:, :-1] - L[:, 1:]
        out[f"r@{k}"] = (np.where(vr, R, 0.0), vr)
        vc = np.zeros((h, w), bool)
        vc[:-1] = mk[:-1] & mk[1:]
        C = np.zeros((h, w))
        C[:-1] = L[:-1] - L[1:]
        out[f"c@{k}"] = (np.where(vc, C, 0.0), vc)
    return out


def scene(B=2, H=72, W=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H, dtype=torch.float64), torch.linspace(0, 1, W, dtype=torch.float64),
                            indexing="ij")
    depth = torch.empty(B, 1, H, W, dtype=torch.float64)
    for b in range(B):
        base = 2 + 3 * yy + torch.sin(6 * xx + b) + 0.2 * torch.rand(H, W, generator=g, dtype=torch.float64)
        base[20:40, 30:60] = 0.3  # a near box: strong edges make the bicubic pyramid undershoot
        depth[b, 0] = base
    mask = torch.ones(B, 1, H, W, dtype=torch.bool)
    mask[0, 0, 5:15, 70:90] = False
    depth[0, 0, 8, 75] = -1.0  # invalid pixels may hold anything
    if B > 1:
        mask[1, 0, 50:, :10] = False
        depth[1, 0, 60, 3] = float("nan")
    return depth, mask


def test_relative_maps_match_direct_float64():
    depth, mask = scene()
    maps, valid = relative_maps(depth, mask)
    assert tuple(maps) == RELATIVE_NAMES and len(RELATIVE_NAMES) == 16
    for b in range(depth.shape[0]):
        ref = direct_maps(depth[b, 0].numpy(), mask[b, 0].numpy())
        for name in RELATIVE_NAMES:
            r_map, r_valid = ref[name]
            assert maps[name].dtype == torch.float64
            np.testing.assert_array_equal(valid[name][b, 0].numpy(), r_valid, err_msg=name)
            np.testing.assert_allclose(maps[name][b, 0].numpy(), r_map, rtol=0, atol=1e-12, err_msg=name)
    # the masked holes really removed pixels, and the r/c maps lose their last column/row
    assert not bool(valid["M5@2"][0].all()) and not bool(valid["r@3"][..., -1].any())
    assert not bool(valid["c@5"][..., -1, :].any())


def test_paper_shapes_and_fallback():
    maps, valid = relative_maps(torch.rand(1, 288, 384) + 0.5)
    got = {n: tuple(maps[n].shape[-2:]) for n in ("M17@2", "M5@3", "r@4", "c@5")}
    assert got == {"M17@2": (72, 96), "M5@3": (36, 48), "r@4": (18, 24), "c@5": (9, 12)}
    assert maps["M17@2"].shape == (1, 1, 72, 96) and maps["M17@2"].dtype == torch.float32
    # 24 rows: scale 5 falls back to the 1x1 resize; one pixel has no difference and no detail
    maps, valid = relative_maps(torch.rand(1, 1, 24, 80) + 0.5)
    assert maps["M17@5"].shape == (1, 1, 1, 1) and float(maps["M17@5"].abs()) < 1e-6
    assert not bool(valid["r@5"].any()) and bool(valid["M5@5"].all())


def test_all_true_mask_scale_free_and_disparity():
    depth, mask = scene(B=1, H=64, W=96, seed=3)
    depth = torch.where(mask, depth, 1.0)
    a, va = relative_maps(depth)
    b, vb = relative_maps(depth, torch.ones_like(depth, dtype=torch.bool))
    c, _ = relative_maps(7.5 * depth)  # relative maps carry no global scale
    d, _ = disparity_maps(2.0 / depth)  # disparity = const / depth: the same maps
    for n in RELATIVE_NAMES:
        assert torch.equal(a[n], b[n]) and torch.equal(va[n], vb[n])
        torch.testing.assert_close(a[n], c[n], rtol=0, atol=1e-12)
        torch.testing.assert_close(a[n], d[n], rtol=0, atol=1e-12)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="> 0 at valid pixels; 1 valid"):
        relative_maps(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]))
    x = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="mask shape"):
        relative_maps(x, torch.ones(1, 1, 8, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        relative_maps(torch.ones(2, 3, 8, 8))
    with pytest.raises(TypeError):
        relative_maps([[1.0]])
    x[0, 0, 0, 0] = 0.0  # fine where masked out
    m = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    m[0, 0, 0, 0] = False
    maps, _ = relative_maps(x, m)
    assert all(bool(torch.isfinite(v).all()) for v in maps.values())


def test_whole_float_range():
    depth, mask = scene(B=1, H=64, W=96, seed=5)
    depth = torch.where(mask, depth, 1.0).float()
    ref, _ = relative_maps(depth)
    for factor in (3e38 / float(depth.max()), 1e-30):  # near the float32 maximum, and tiny depths
        maps, _ = relative_maps(depth * factor)
        for n in RELATIVE_NAMES:
            assert bool(torch.isfinite(maps[n]).all()), n
            torch.testing.assert_close(maps[n], ref[n], rtol=0, atol=2e-5)
