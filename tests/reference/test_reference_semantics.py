"""mlrb.reference: pyramid, 1x1 fallback, masks, dtypes and gradients (spec semantics)."""
import pytest
import torch
import torch.nn.functional as F

from mlrb import reference
from mlrb.names import ALL_NAMES, LOSS_NAMES, LOSS_TYPES

ALL80 = list(range(len(ALL_NAMES)))


def rand_pair(B=2, H=23, W=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = 1 + 4 * torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    pred = (gt + 0.5 * torch.randn(B, 1, H, W, generator=g, dtype=torch.float64)).abs() + 0.1
    return pred.to(dtype), gt.to(dtype)


@pytest.mark.parametrize("H, W", [(16, 16), (23, 37), (9, 70), (64, 33)])
def test_pyramid_is_the_separable_four_tap_filter(H, W):
    # Spec: weights (-3, 19, 19, -3)/32 at input indices 2^k i + 2^(k-1) - 2 ... + 1, clamped.
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    taps = torch.tensor([-3.0, 19.0, 19.0, -3.0], dtype=torch.float64) / 32
    for k in range(1, 6):
        h, w = H >> k, W >> k
        if h == 0 or w == 0:
            continue
        rows = ((torch.arange(h) << k)[:, None] + (1 << (k - 1)) - 2 + torch.arange(4)).clamp(0, H - 1)
        cols = ((torch.arange(w) << k)[:, None] + (1 << (k - 1)) - 2 + torch.arange(4)).clamp(0, W - 1)
        a = (x[0, 0][rows] * taps[None, :, None]).sum(1)          # (h, W)
        expected = (a[:, cols] * taps[None, None, :]).sum(2)       # (h, w)
        torch.testing.assert_close(reference.pyramid_level(x, k)[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_level_shapes_and_fallback():
    assert reference.level_shape(288, 384, 5) == (9, 12)
    assert reference.level_shape(20, 28, 5) == (1, 1)    # 20 >> 5 == 0
    assert reference.level_shape(20, 64, 5) == (1, 1)    # one dimension is enough
    x = torch.randn(1, 1, 20, 28, dtype=torch.float64)
    torch.testing.assert_close(reference.pyramid_level(x, 5),
                               F.interpolate(x, size=[1, 1], mode="bicubic", align_corners=False))


def test_one_pixel_map_at_every_scale():
    # A 1x1 map is its own pyramid: D = |e| everywhere, every gradient-based loss 0,
    # normals 1 - 1/(1 + eps).
    pred, gt = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64), torch.ones(1, 1, 1, 1, dtype=torch.float64)
    out = reference.losses_by_name(pred, gt)
    flat = 1 - 1 / (1 + reference.NORMAL_EPS)
    for name, v in out.items():
        t = name.split("@")[0]
        expected = 2.0 if t == "D" else flat if t.startswith("N") else 0.0
        assert v.item() == pytest.approx(expected, abs=1e-15), name


def test_footprint_mask_covers_the_bicubic_support():
    # Invalidating any pixel that influences a level-k value must invalidate that value.
    H, W = 13, 22
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    for k in range(1, 6):
        J = torch.autograd.functional.jacobian(lambda z: reference.pyramid_level(z, k), x)
        h, w = reference.level_shape(H, W, k)
        J = J.reshape(h * w, H * W)
        for o in range(h * w):
            for p in (J[o] != 0).nonzero().flatten().tolist():
                m = torch.ones(1, 1, H, W, dtype=torch.bool)
                m.view(-1)[p] = False
                assert not reference.mask_level(m, k).reshape(-1)[o]


def holes_mask(shape, seed=1):
    m = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.25
    m[..., 3:9, 5:14] = False
    return m


def test_all_true_mask_equals_no_mask_exactly():
    pred, gt = rand_pair()
    full = torch.ones_like(pred, dtype=torch.bool)
    assert torch.equal(reference.loss_space(pred, gt, None, ALL80), reference.loss_space(pred, gt, full, ALL80))


def test_values_at_invalid_pixels_never_matter():
    pred, gt = rand_pair()
    mask = holes_mask(pred.shape)
    p1 = pred.clone().requires_grad_(True)
    L1 = reference.loss_space(p1, gt, mask, ALL80)
    (g1,) = torch.autograd.grad(L1.sum(), p1)
    pred2, gt2 = pred.clone(), gt.clone()
    pred2[~mask] = float("nan")
    gt2[~mask] = float("inf")
    p2 = pred2.requires_grad_(True)
    L2 = reference.loss_space(p2, gt2, mask, ALL80)
    (g2,) = torch.autograd.grad(L2.sum(), p2)
    assert torch.equal(L1, L2)
    assert torch.equal(g1, g2)
    assert torch.all(g1[~mask] == 0)


def test_empty_mask_gives_zero_and_no_gradient():
    pred, gt = rand_pair(B=1)
    p = pred.clone().requires_grad_(True)
    L = reference.loss_space(p, gt, torch.zeros_like(pred, dtype=torch.bool), ALL80)
    (g,) = torch.autograd.grad(L.sum(), p)
    assert torch.equal(L, torch.zeros_like(L))
    assert torch.equal(g, torch.zeros_like(g))


def test_masked_losses_match_a_pixel_loop():
    # Independent per-pixel reading of the mask rules at scale 0 for D, r, rc and M5.
    pred, gt = rand_pair(B=1, H=9, W=11)
    mask = holes_mask(pred.shape)
    e, m = (pred - gt)[0, 0], mask[0, 0]
    H, W = e.shape
    c = lambda i, j: (min(i, H - 1), min(j, W - 1))  # noqa: E731
    D = [abs(e[i, j]) for i in range(H) for j in range(W) if m[i, j]]
    r = [abs(e[i, j] - e[c(i, j + 1)]) for i in range(H) for j in range(W) if m[i, j] and m[c(i, j + 1)]]
    rc = [abs(e[i, j] - e[c(i + 1, j)] - e[c(i, j + 1)] + e[c(i + 1, j + 1)])
          for i in range(H) for j in range(W)
          if m[i, j] and m[c(i + 1, j)] and m[c(i, j + 1)] and m[c(i + 1, j + 1)]]
    M5 = []
    for i in range(H):
        for j in range(W):
            if not m[i, j]:
                continue
            win = [(min(max(a, 0), H - 1), min(max(b, 0), W - 1)) for a in range(i - 2, i + 3) for b in range(j - 2, j + 3)]
            vals = [e[p] for p in win if m[p]]
            M5.append(abs(e[i, j] - sum(vals) / len(vals)))
    out = reference.losses_by_name(pred, gt, mask, ["D@0", "r@0", "rc@0", "M5@0"])
    for name, vals in (("D@0", D), ("r@0", r), ("rc@0", rc), ("M5@0", M5)):
        assert out[name].item() == pytest.approx(float(sum(vals) / len(vals)), rel=1e-12), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype):
    pred, gt = rand_pair(dtype=dtype)
    out = reference.loss_space(pred, gt, None, ALL80)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    exact = reference.loss_space(pred.double(), gt.double(), None, ALL80)
    torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mask_kind", [None, "holes", "sparse"])
def test_gradients_are_finite_for_every_loss(mask_kind):
    pred, gt = rand_pair(dtype=torch.float32)
    mask = {None: None, "holes": holes_mask(pred.shape),
            "sparse": torch.rand(pred.shape, generator=torch.Generator().manual_seed(3)) < 0.05}[mask_kind]
    p = pred.clone().requires_grad_(True)
    L = reference.loss_space(p, gt, mask, ALL80)
    assert torch.isfinite(L).all()
    for j in range(L.shape[1]):
        (g,) = torch.autograd.grad(L[:, j].sum(), p, retain_graph=True)
        assert torch.isfinite(g).all(), ALL_NAMES[j]


def test_gradcheck_float64_small_map():
    pred, gt = rand_pair(B=1, H=7, W=9)
    mask = holes_mask(pred.shape, seed=4)
    # Keep |e| away from 0 so abs() is differentiable at every pixel of every level.
    for m in (None, mask):
        fn = lambda p: reference.loss_space(p, gt, m, ALL80)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (pred.clone().requires_grad_(True),), eps=1e-7, atol=1e-5)


def test_loss_order_is_paper_order():
    pred, gt = rand_pair()
    full = reference.loss_space(pred, gt, None, None)
    assert full.shape == (2, 78)
    for j in (0, 14, 40, 77):
        single = reference.losses_by_name(pred, gt, None, [LOSS_NAMES[j]])[LOSS_NAMES[j]]
        assert torch.equal(full[:, j], single)
    assert LOSS_NAMES[13 * 2 + LOSS_TYPES.index("M17")] == "M17@2"


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6, 1e9, 1e18, 1e30])
def test_float32_normal_losses_over_the_depth_range(scale):
    # The normal loss scales its vectors by powers of two before squaring: float32 depths
    # up to the float range neither overflow nor lose precision (gradients too).
    pred, gt = rand_pair(1, 12, 16)
    pred, gt = (pred * scale).float(), (gt * scale).float()
    idx = [LOSS_NAMES.index(n) for n in LOSS_NAMES if n.split("@")[0] in ("N", "Nr", "Nc")]
    out = {}
    for dtype in (torch.float32, torch.float64):
        p = pred.to(dtype).requires_grad_(True)
        L = reference.loss_space(p, gt.to(dtype), None, idx)
        (g,) = torch.autograd.grad(L.sum(), p)
        out[dtype] = L.double(), g.double()
    (L32, g32), (L64, g64) = out[torch.float32], out[torch.float64]
    torch.testing.assert_close(L32, L64, rtol=0, atol=2e-6)
    gmax = g64.abs().max()
    torch.testing.assert_close(g32 / gmax, g64 / gmax, rtol=2e-4, atol=2e-6)


def test_normal_loss_scaling_is_exact_at_ordinary_depths():
    # Powers of two scale exactly: the float64 result is the plain formula's, bit for bit.
    a1, a2, b1, b2 = (torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) * 30
                      for s in range(4))
    plain = 1 - (a1 * b1 + a2 * b2 + 1) / (torch.sqrt(a1 * a1 + a2 * a2 + 1) * torch.sqrt(b1 * b1 + b2 * b2 + 1)
                                           + reference.NORMAL_EPS)
    assert torch.equal(reference.normal_loss(a1, a2, b1, b2), plain)


@pytest.mark.parametrize("factor", [1e3, 1e6])
def test_float32_scale_invariant_loss_with_pred_off_by_a_factor(factor):
    # Si = mean(d^2) - lambda mean(d)^2 cancels when |mean d| >> std d (pred in millimetres
    # against gt in metres, say), exactly where a scale-invariant loss is meant to work; it
    # is computed as var(d) + (1 - lambda) mean(d)^2.
    pred, gt = rand_pair(1, 12, 16)
    pred = pred * factor
    idx = [ALL_NAMES.index("Si")]
    for lam in (1.0, 0.85):
        out = {}
        for dtype in (torch.float32, torch.float64):
            p = pred.to(dtype).requires_grad_(True)
            L = reference.loss_space(p, gt.to(dtype), None, idx, si_lambda=lam)
            (g,) = torch.autograd.grad(L.sum(), p)
            out[dtype] = L.double(), g.double()
        torch.testing.assert_close(out[torch.float32][0], out[torch.float64][0], rtol=2e-5, atol=0)
        gmax = out[torch.float64][1].abs().max()
        torch.testing.assert_close(out[torch.float32][1] / gmax, out[torch.float64][1] / gmax, rtol=1e-4, atol=1e-5)
