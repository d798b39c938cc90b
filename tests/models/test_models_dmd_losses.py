"""DMD targets and losses (Jun et al. 2022, Eqs. 1, 4, 7-12) against direct per-pixel formulas."""
import math

import numpy as np
import pytest
import torch

from mlrb.models.dmd_losses import (DMD_NAMES, N_NAMES, dmd_loss_names, dmd_losses, dmd_targets,
                                    inverse_depth, metric_depth)

H, W = 16, 24


def _batch(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    depth = 0.5 + 9.0 * torch.rand(b, 1, H, W, generator=g, dtype=torch.float64)
    mask = torch.rand(b, 1, H, W, generator=g) > 0.2
    pred = {
        "G": torch.randn(b, 2, H, W, generator=g, dtype=torch.float64),
        "N": torch.randn(b, 1, H, W, generator=g, dtype=torch.float64),
        "m": 0.05 + 0.9 * torch.rand(b, 1, H, W, generator=g, dtype=torch.float64),
        "mu": torch.rand(b, 1, generator=g, dtype=torch.float64),
    }
    return depth, mask, pred


def _z(m, v):
    """Eq. 1 on inverse depth, population std, by hand."""
    vals = m[v]
    mu, sd = vals.mean(), math.sqrt(((vals - vals.mean()) ** 2).mean())
    return np.where(v, (m - mu) / sd, 0.0)


def _scaled(x, v, s):
    """Bilinear scaling by s = 2^-k with half-pixel centres: the mean of the two middle
    pixels of each 1/s block per axis (s = 0.5: the 2x2 block mean)."""
    k = int(round(1 / s))
    lo = k // 2 - 1
    h, w = x.shape[0] // k, x.shape[1] // k
    xs, vs = np.zeros((h, w)), np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            rows, cols = [k * i + lo, k * i + lo + 1], [k * j + lo, k * j + lo + 1]
            xs[i, j] = np.mean([x[r, c] for r in rows for c in cols])
            vs[i, j] = all(v[r, c] for r in rows for c in cols)
    return xs, vs


def _grad_loss(p, t, v, s, T, axis):
    ps, _ = _scaled(p, np.ones_like(v), s)
    ts, vs = _scaled(np.where(v, t, 0.0), v, s)
    total = 0.0
    for i in range(ps.shape[0] - (axis == 0)):
        for j in range(ps.shape[1] - (axis == 1)):
            i2, j2 = (i + 1, j) if axis == 0 else (i, j + 1)
            if vs[i, j] and vs[i2, j2]:
                total += abs((ps[i2, j2] - ps[i, j]) - (ts[i2, j2] - ts[i, j]))
    return total / (T * s * s)


def _direct(depth, mask, pred, b):
    d, v = depth[b, 0].numpy(), mask[b, 0].numpy()
    m = 1.0 / (d + 1.0)
    n = _z(m, v)
    T = v.sum()
    gh, nh, mh = pred["G"][b].numpy(), pred["N"][b, 0].numpy(), pred["m"][b, 0].numpy()
    out = {}
    lg = 0.0
    for i in range(H):
        for j in range(W):
            if j + 1 < W and v[i, j] and v[i, j + 1]:
                lg += abs(gh[0, i, j] - (n[i, j + 1] - n[i, j]))
            if i + 1 < H and v[i, j] and v[i + 1, j]:
                lg += abs(gh[1, i, j] - (n[i + 1, j] - n[i, j]))
    out["G"] = lg / T
    out["N"] = np.abs(nh - n)[v].sum() / T
    out["M"] = np.abs(mh - m)[v].sum() / T
    for s in (0.5, 0.25, 0.125):
        out[f"Nx@{s:g}"] = _grad_loss(nh, n, v, s, T, 1)
        out[f"Ny@{s:g}"] = _grad_loss(nh, n, v, s, T, 0)
        out[f"Mx@{s:g}"] = _grad_loss(mh, m, v, s, T, 1)
        out[f"My@{s:g}"] = _grad_loss(mh, m, v, s, T, 0)
    out["mu"] = abs(float(pred["mu"][b]) - m[v].mean())
    out["logM"] = np.abs(np.log(mh) - np.log(m))[v].sum() / T
    return out, n


def test_targets_follow_eqs_1_4_12():
    depth, mask, _ = _batch()
    t = dmd_targets(depth, mask)
    for b in range(2):
        v = mask[b, 0].numpy()
        m = 1.0 / (depth[b, 0].numpy() + 1.0)
        n = _z(m, v)
        assert np.allclose(t["m"][b, 0].numpy()[v], m[v], rtol=1e-6)
        assert np.allclose(t["N"][b, 0].numpy(), n, atol=1e-5)
        gx = t["Gx"][b, 0].numpy()
        vx = t["valid_x"][b, 0].numpy()
        for i in range(H):
            for j in range(W):
                both = j + 1 < W and v[i, j] and v[i, j + 1]
                assert vx[i, j] == both
                if both:
                    assert abs(gx[i, j] - (n[i, j + 1] - n[i, j])) < 1e-5
        assert int(t["T"][b]) == v.sum()


def test_losses_match_direct_formulas():
    depth, mask, pred = _batch()
    losses, lmask = dmd_losses(pred, dmd_targets(depth, mask))
    assert losses.shape == (2, len(DMD_NAMES)) == lmask.shape and bool(lmask.all())
    assert len(DMD_NAMES) == 17
    for b in range(2):
        ref, _ = _direct(depth, mask, pred, b)
        for i, name in enumerate(DMD_NAMES):
            assert losses[b, i].item() == pytest.approx(ref[name], rel=1e-5, abs=1e-6), name


def test_selection_order_and_variants():
    depth, mask, pred = _batch()
    names = dmd_loss_names(m=False)  # phase 1: G and N only
    assert names == ("G",) + N_NAMES
    base = dmd_loss_names(g=False, n=False, mu=False, log_m=False)  # the paper's 'Baseline'
    assert base == ("M", "Mx@0.5", "My@0.5", "Mx@0.25", "My@0.25", "Mx@0.125", "My@0.125")
    full, _ = dmd_losses(pred, dmd_targets(depth, mask))
    part, _ = dmd_losses({"m": pred["m"]}, dmd_targets(depth, mask), base[::-1])
    idx = [DMD_NAMES.index(n) for n in base[::-1]]
    assert torch.allclose(part, full[:, idx])
    with pytest.raises(ValueError, match="unknown DMD loss"):
        dmd_losses(pred, dmd_targets(depth, mask), ["Q"])
    with pytest.raises(ValueError, match="need the prediction 'mu'"):
        dmd_losses({"m": pred["m"]}, dmd_targets(depth, mask), ["mu"])
    with pytest.raises(ValueError, match="'G' must have shape"):
        dmd_losses({**pred, "G": pred["N"]}, dmd_targets(depth, mask))
    with pytest.raises(ValueError, match="mask must have the shape"):
        dmd_targets(depth, mask[:, :, :4])


def test_relative_samples_get_only_g_and_n_and_empty_samples_nothing():
    depth, mask, pred = _batch()
    disparity = depth.clone()
    disparity[1] = 1.0 / depth[1]  # a relative (disparity) map for sample 1
    mask[0] = False  # sample 0: no valid pixel
    metric = torch.tensor([True, False])
    pred = {k: v.clone().requires_grad_(True) for k, v in pred.items()}
    t = dmd_targets(disparity, mask, metric=metric)
    losses, lmask = dmd_losses(pred, t)
    rel = [n in ("G",) + N_NAMES for n in DMD_NAMES]
    assert lmask[0].tolist() == [False] * len(DMD_NAMES)
    assert lmask[1].tolist() == rel
    assert bool((losses[~lmask] == 0).all())
    # The relative sample's N is the z-score of its disparity map as given (no Eq. 12).
    v = mask[1, 0].numpy()
    assert np.allclose(t["N"][1, 0].numpy(), _z(disparity[1, 0].numpy(), v), atol=1e-5)
    losses.sum().backward()
    for k, p in pred.items():
        assert torch.isfinite(p.grad).all(), k
    assert float(pred["mu"].grad.abs().sum()) == 0.0  # no metric sample has mu


def test_constant_depth_gives_zero_n_and_log_loss_survives_nonpositive_predictions():
    depth = torch.full((1, 1, 8, 8), 3.0)
    t = dmd_targets(depth)
    assert float(t["N"].abs().max()) == 0.0
    pred = {"m": torch.full((1, 1, 8, 8), -0.5, requires_grad=True)}
    losses, _ = dmd_losses(pred, t, ["logM"])
    assert torch.isfinite(losses).all() and losses.item() > 0
    losses.sum().backward()
    assert torch.isfinite(pred["m"].grad).all()


def test_inverse_depth_round_trip():
    d = torch.tensor([0.0, 0.001, 1.0, 9.9, 10.0])
    assert torch.allclose(metric_depth(inverse_depth(d)), d.clamp(1e-3, 10.0), atol=1e-5)
    # m <= 0 (an untrained head) gives the maximum depth, never inf or a negative depth.
    assert metric_depth(torch.tensor([-1.0, 0.0])).tolist() == pytest.approx([10.0, 10.0])
