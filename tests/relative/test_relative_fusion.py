"""ODE + RDE fusion (Eq. S-3, Fig. S-7) and the exact fit of its gammas."""
import pytest
import torch
import torch.nn.functional as F

from mlrb.relative import GAMMA_NAMES, fit_gammas, fuse, relative_maps
from mlrb.relative.fusion import weighted_median_gamma
from mlrb.train.synthetic import SyntheticDepth


@pytest.fixture(scope="module")
def scene():
    """Ground truth of two synthetic rooms and an ODE depth with mid-frequency errors."""
    ds = SyntheticDepth(2, (128, 192), seed=0)
    gt = torch.stack([ds[i]["depth"] for i in range(2)]).double()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 1, 12, 16, generator=g, dtype=torch.float64)
    ode = gt * torch.exp(0.2 * F.interpolate(noise, size=(128, 192), mode="bicubic", align_corners=False))
    maps, valid = relative_maps(gt)
    return gt, ode, maps, valid


def log_err(d, gt):
    return float((d.log() - gt.log()).abs().mean())


def test_zero_gammas_return_ode_exactly(scene):
    gt, ode, maps, valid = scene
    assert torch.equal(fuse(ode, maps, 0.0, valid), ode)
    zeros = dict.fromkeys(GAMMA_NAMES, 0.0)
    ode32 = ode.float()
    out = fuse(ode32, {n: torch.randn_like(m).float() for n, m in maps.items()}, zeros)
    assert out.dtype == torch.float32 and torch.equal(out, ode32)


def test_fitted_fusion_with_exact_maps_gets_much_closer(scene):
    gt, ode, maps, valid = scene
    gammas = fit_gammas(ode, maps, gt, valid=valid)
    assert tuple(gammas) == GAMMA_NAMES and all(0.0 <= g <= 1.0 for g in gammas.values())
    # exact maps: every module helps, so none is switched off (a wrong module would fit g ~ 0)
    assert min(gammas.values()) > 0.5, gammas
    fused = fuse(ode, maps, gammas, valid)
    before, after = log_err(ode, gt), log_err(fused, gt)
    assert after < 0.45 * before, (before, after)  # measured: 0.14 -> 0.05
    # maps of the wrong scene carry no information about this one: the fit switches them off
    wrong, wvalid = relative_maps(gt.flip(0))
    g_wrong = fit_gammas(ode, wrong, gt, valid=wvalid)
    assert log_err(fuse(ode, wrong, g_wrong, wvalid), gt) > 0.8 * before


def test_fusion_is_scale_equivariant_over_the_float_range(scene):
    gt, ode, maps, valid = scene
    gammas = fit_gammas(ode, maps, gt, valid=valid)
    ref = fuse(ode.float(), maps, gammas, valid)
    for factor in (1e30, 1e-30):  # the maps carry no scale: the refinement is the same ratio
        out = fuse(ode.float() * factor, maps, gammas, valid)
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out / factor, ref, rtol=1e-5, atol=0)


def test_weighted_median_is_the_exact_l1_optimum():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(301, generator=g, dtype=torch.float64), torch.randn(301, generator=g, dtype=torch.float64)
    b[:20] = 0.0
    best = weighted_median_gamma(a, b)
    obj = lambda x: float((a + x * b).abs().sum())
    candidates = (-a[20:] / b[20:]).tolist()  # a piecewise-linear convex function: optimum at a kink
    assert obj(best) <= min(obj(c) for c in candidates) + 1e-9
    assert weighted_median_gamma(a, torch.zeros_like(b)) is None


def test_rde_only_is_relative_depth(scene):
    gt, _, maps, valid = scene
    gammas = fit_gammas(None, maps, gt, valid=valid, size=gt.shape[-2:])
    rel = fuse(None, maps, gammas, valid, size=gt.shape[-2:])
    centred = lambda x: x - x.mean(dim=(1, 2, 3), keepdim=True)
    err = float(centred(rel.log() - gt.log()).abs().mean())
    flat = float(centred(gt.log()).abs().mean())  # a constant prediction
    assert err < 0.15 * flat, (err, flat)  # measured: 0.021 vs 0.37
    maps3, valid3 = relative_maps(3.0 * gt)  # scale-free
    torch.testing.assert_close(fuse(None, maps3, gammas, valid3, size=gt.shape[-2:]), rel)


def test_bad_input_errors(scene):
    gt, ode, maps, valid = scene
    with pytest.raises(ValueError, match="lacks 1 relative map"):
        fuse(ode, {n: m for n, m in maps.items() if n != "c@3"}, 0.5)
    with pytest.raises(ValueError, match="map 'M17@2' must be"):
        fuse(ode, {**maps, "M17@2": maps["M17@2"][..., :-1]}, 0.5)
    with pytest.raises(ValueError, match="gammas"):
        fuse(ode, maps, {"M17@5": 1.0})
    with pytest.raises(ValueError, match="finite"):
        fuse(ode, maps, float("nan"))
    with pytest.raises(ValueError, match="ode_depth must be finite and > 0"):
        fuse(-ode, maps, 0.5)
    assert bool((fuse(-ode, maps, 0.5, valid, min_depth=0.1) > 0).all())  # clamped first
    with pytest.raises(ValueError, match="gt shape"):
        fit_gammas(ode, maps, gt[:, :, :-1])
