"""ODE + RDE fusion of Lee & Kim's supplement (S-3, Eq. S-3, Fig. S-7), and its gammas.

In log depth. The ODE map D^0 is decomposed into log D^5 and residuals
log D^k_res = log D^k - U(log D^(k+1)) (Eq. S-3; D^k the loss space's bicubic pyramid,
U the bilinear x2). From k = 5 down to 2 the refining unit of scale k updates
X (an approximation of log D^k) with three modules, then X <- U(X) + log D^(k-1)_res;
the last unit (scale 1) only up-samples and adds log D^0_res.

Modules (Fig. S-7; the figure itself is not in the text, the readings are ours):
* box module n (Fig. S-7 (b)), n = 17 then 5:
  ``X <- box_n(X) + (1 - g)(X - box_n(X)) + g R^k_Mn``  (box_n: n x n mean, replicate-padded);
* gradient module (Fig. S-7 (c)): four estimates of each pixel from its neighbours and the
  gradient maps (dx(L)[i, j] = L[i, j] - L[i, j+1], the spec's convention):
  from the right X[i, j+1] + R_r[i, j], from the left X[i, j-1] - R_r[i, j-1],
  from below X[i+1, j] + R_c[i, j], from above X[i-1, j] - R_c[i-1, j];
  ``X <- (1 - g) X + g * mean(available estimates)``.

Ambiguities and the readings chosen (also in the README):
1. Order of the modules in a unit: box 17, box 5, then gradient (coarse detail first).
2. g per module, not per scale: 3 modules x 4 scales = 12 gammas, GAMMA_NAMES
   ("M17@5", "M5@5", "grad@5", "M17@4", ... in the order they are applied).
3. The four neighbour estimates are weighted equally; an estimate that would read outside
   the map or an invalid gradient is left out (the mean is over the available ones), a pixel
   with none keeps X.
4. U is ``F.interpolate(mode="bilinear", align_corners=False)`` to the size of the next
   finer pyramid level (exactly x2 when H and W are multiples of 32).
5. One pass of each module (no iteration).
6. The ODE depth is clamped from below by ``min_depth`` (a linear-head ODE can output <= 0);
   D^k of the pyramid is clamped as in mlrb.relative.maps.
7. "RDE only" (Table S-5): the same units on X = 0 at scale 5 with no residuals; the result is
   relative depth, exp of log depth up to an additive constant; its gammas are fitted
   against the ground truth's log depth after removing each sample's mean log difference.

Implementation: X = log D^k + delta is carried as the correction ``delta`` (U is linear, so
U(log D^(k+1) + delta) + log D^k_res = log D^k + U(delta)), and the output is
``D^0 * exp(delta)``: with every g = 0, delta stays exactly 0 and the ODE depth comes back
bit for bit. Every module is affine in its g (X + g * Delta), so the g minimising
``||X_out - log D^k_gt||_1`` on training data is a weighted median of
(log D^k_gt - X) / Delta with weights |Delta|: :func:`fit_gammas` fits the 12 coarse to fine,
exactly, no search.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from mlrb.reference import box_sum, level_shape
from mlrb.relative.maps import BOX, RELATIVE_NAMES, RELATIVE_SCALES, check_depth, log_level

MODULES = ("M17", "M5", "grad")
GAMMA_NAMES = tuple(f"{m}@{k}" for k in reversed(RELATIVE_SCALES) for m in MODULES)


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """U: bilinear to the next finer level's size (reading 4)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def box_delta(X: torch.Tensor, R: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """Fig. S-7 (b) as X + g * Delta: Delta = R_Mn - (X - box_n(X)), 0 where R_Mn is invalid."""
    low = box_sum(X, n) / (n * n)
    return torch.where(v, R - (X - low), 0.0)


def gradient_delta(X: torch.Tensor, Rr: torch.Tensor, Rc: torch.Tensor, vr: torch.Tensor, vc: torch.Tensor
                   ) -> torch.Tensor:
    """Fig. S-7 (c) as X + g * Delta: Delta = mean of the available neighbour estimates - X."""
    est, cnt = torch.zeros_like(X), torch.zeros_like(X)
    a = vr[..., :, :-1]
    est[..., :, :-1] += torch.where(a, X[..., :, 1:] + Rr[..., :, :-1], 0.0)  # from the right
    est[..., :, 1:] += torch.where(a, X[..., :, :-1] - Rr[..., :, :-1], 0.0)  # from the left
    cnt[..., :, :-1] += a
    cnt[..., :, 1:] += a
    a = vc[..., :-1, :]
    est[..., :-1, :] += torch.where(a, X[..., 1:, :] + Rc[..., :-1, :], 0.0)  # from below
    est[..., 1:, :] += torch.where(a, X[..., :-1, :] - Rc[..., :-1, :], 0.0)  # from above
    cnt[..., :-1, :] += a
    cnt[..., 1:, :] += a
    return torch.where(cnt > 0, est / cnt.clamp(min=1) - X, 0.0)


def _check_maps(maps, valid, B: int | None, H: int, W: int, dtype, device):
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a dict name -> tensor, got {type(maps).__name__}")
    missing = [n for n in RELATIVE_NAMES if n not in maps]
    if missing:
        raise ValueError(f"maps lacks {len(missing)} relative map(s): {', '.join(missing)}")
    if valid is not None and not isinstance(valid, Mapping):
        raise TypeError(f"valid must be a dict name -> bool tensor or None, got {type(valid).__name__}")
    out_m, out_v = {}, {}
    for n in RELATIVE_NAMES:
        r = maps[n]
        h, w = level_shape(H, W, int(n.split("@")[1]))
        if not isinstance(r, torch.Tensor) or r.dim() != 4 or r.shape[1] != 1 or tuple(r.shape[-2:]) != (h, w) \
                or (B is not None and r.shape[0] != B):
            got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"map {n!r} must be ({'B' if B is None else B}, 1, {h}, {w}) for a {H}x{W} depth map; got {got}")
        v = None if valid is None else valid.get(n)
        if v is None:
            v = torch.ones_like(r, dtype=torch.bool)
        elif not isinstance(v, torch.Tensor) or v.shape != r.shape:
            raise ValueError(f"valid[{n!r}] must be a bool tensor of shape {tuple(r.shape)}")
        r = r.to(device=device, dtype=dtype)
        v = (v != 0).to(device) & torch.isfinite(r)
        out_m[n], out_v[n] = torch.where(v, r, 0.0), v
    return out_m, out_v


def _gammas(gammas) -> dict[str, float]:
    if isinstance(gammas, (int, float)) and not isinstance(gammas, bool):
        vals = {n: float(gammas) for n in GAMMA_NAMES}
    elif isinstance(gammas, Mapping):
        missing = [n for n in GAMMA_NAMES if n not in gammas]
        extra = [n for n in gammas if n not in GAMMA_NAMES]
        if missing or extra:
            raise ValueError(f"gammas must have exactly the keys {GAMMA_NAMES}; missing {missing}, unknown {extra}")
        vals = {n: float(gammas[n]) for n in GAMMA_NAMES}
    elif isinstance(gammas, Sequence) and not isinstance(gammas, str) and len(gammas) == len(GAMMA_NAMES):
        vals = {n: float(g) for n, g in zip(GAMMA_NAMES, gammas)}
    else:
        raise ValueError(f"gammas must be a number, a dict over GAMMA_NAMES or a sequence of {len(GAMMA_NAMES)}")
    bad = [n for n, g in vals.items() if g != g or g in (float("inf"), float("-inf"))]
    if bad:
        raise ValueError(f"gammas must be finite; not: {', '.join(bad)}")
    return vals


def _prepare(ode_depth, maps, valid, size, min_depth):
    """Checked inputs: (ode (B,1,H,W) or None, H, W, dtype, maps, valid)."""
    if ode_depth is not None:
        if min_depth is not None:
            if not min_depth > 0:
                raise ValueError(f"min_depth must be > 0, got {min_depth}")
            if isinstance(ode_depth, torch.Tensor) and ode_depth.is_floating_point():
                ode_depth = ode_depth.nan_to_num(nan=min_depth).clamp(min=min_depth)
        ode_depth, _ = check_depth(ode_depth, None, name="ode_depth")
        B, (H, W) = ode_depth.shape[0], ode_depth.shape[-2:]
        dtype = torch.float64 if ode_depth.dtype == torch.float64 else torch.float32
        device = ode_depth.device
    else:
        if not isinstance(maps, Mapping) or "M17@2" not in maps or not isinstance(maps["M17@2"], torch.Tensor) \
                or maps["M17@2"].dim() != 4:
            raise ValueError("RDE-only fusion (ode_depth=None) needs maps with a (B, 1, h, w) 'M17@2'")
        ref = maps["M17@2"]
        B = ref.shape[0]
        H, W = (4 * ref.shape[-2], 4 * ref.shape[-1]) if size is None else (int(size[0]), int(size[1]))
        if H < 1 or W < 1:
            raise ValueError(f"size must be positive, got {size}")
        dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        device = ref.device
    maps, valid = _check_maps(maps, valid, B, H, W, dtype, device)
    return ode_depth, B, H, W, dtype, device, maps, valid


def _run(ode, B, H, W, dtype, device, maps, valid, choose: Callable, absolute: bool = True) -> torch.Tensor:
    """The units from scale 5 to 0; ``choose(name, k, X, Delta)`` gives each module's g.

    Every module's Delta is unchanged by adding a constant to X, so ``absolute=False`` (fuse)
    works on log D^k minus the log of the ODE's largest depth (no rounding from large logs);
    fit_gammas needs X on the ground truth's absolute scale.

    Returns delta at full resolution (B, 1, H, W): log D_out - log D^0 (ODE) or log D_out (RDE only).
    """
    ones = None if ode is None else torch.ones_like(ode, dtype=torch.bool)
    delta = torch.zeros(B, 1, *level_shape(H, W, RELATIVE_SCALES[-1]), dtype=dtype, device=device)
    for k in reversed(RELATIVE_SCALES):
        base = 0.0 if ode is None else log_level(ode, ones, k, absolute=absolute)[0]
        for mod in MODULES:
            X = base + delta
            if mod == "grad":
                D = gradient_delta(X, maps[f"r@{k}"], maps[f"c@{k}"], valid[f"r@{k}"], valid[f"c@{k}"])
            else:
                D = box_delta(X, maps[f"{mod}@{k}"], valid[f"{mod}@{k}"], BOX[mod])
            g = choose(f"{mod}@{k}", k, X, D)
            if g != 0:
                delta = delta + g * D
        delta = upsample(delta, level_shape(H, W, k - 1))
    return upsample(delta, (H, W))  # scale 1 -> 0: the last unit only up-samples (+ residual)


def fuse(ode_depth, maps, gammas, valid=None, *, size=None, min_depth: float | None = None) -> torch.Tensor:
    """Refine ``ode_depth`` (B, 1, H, W) with the 16 relative maps (Eq. S-3, Fig. S-7).

    maps: dict RELATIVE_NAMES -> (B, 1, h_k, w_k) (e.g. RelativeDepthNet's output, or
    mlrb.relative.relative_maps of a depth map); valid: optional dict of bool masks (default
    all valid); gammas: dict over GAMMA_NAMES (fit_gammas' output), a sequence of 12, or one
    number for all. ``min_depth``: clamp the ODE depth from below first (else it must be > 0).
    ``ode_depth=None``: "RDE only", relative depth of size ``size`` (default 4x the scale-2
    maps) up to a global scale. Returns depth of ode_depth's dtype (float32 / float64 for RDE only).
    With every g = 0 the result equals ode_depth exactly.
    """
    g = _gammas(gammas)
    in_dtype = ode_depth.dtype if isinstance(ode_depth, torch.Tensor) else None
    ode, B, H, W, dtype, device, maps, valid = _prepare(ode_depth, maps, valid, size, min_depth)
    delta = _run(ode, B, H, W, dtype, device, maps, valid, lambda name, k, X, D: g[name], absolute=False)
    if ode is None:
        return torch.exp(delta)
    if not bool(delta.any()):
        return ode.to(in_dtype)
    return (ode.to(dtype) * torch.exp(delta)).to(in_dtype)


def weighted_median_gamma(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """argmin_g sum |a + g b| (a, b 1-D): the weighted median of -a/b, weights |b|; None if b == 0."""
    sel = b != 0
    a, b = a[sel].double(), b[sel].double()
    if b.numel() == 0:
        return None
    t, w = -a / b, b.abs()
    t, order = torch.sort(t)
    cw = torch.cumsum(w[order], 0)
    i = int(torch.searchsorted(cw, cw[-1] / 2))
    return float(t[min(i, t.numel() - 1)])


def fit_gammas(ode_depth, maps, gt, mask=None, valid=None, *, size=None, clip=(0.0, 1.0),
               min_depth: float | None = None) -> dict[str, float]:
    """The 12 gammas minimising ||X_out - log D^k_gt||_1 per module, coarse to fine, exactly.

    ode_depth (B, 1, H, W) (or None for RDE only), maps (and valid) as in :func:`fuse`, gt
    (B, 1, H, W) > 0 at the valid pixels of ``mask``; pass the whole fitting set as one batch.
    Each g is the weighted median of (log D^k_gt - X) / Delta over the valid ground-truth
    pixels of scale k (the objective is convex in g, so clipping to ``clip`` (the convex
    combination range [0, 1] by default; None: unclipped) gives the constrained optimum).
    A module with no information (Delta = 0 everywhere) gets g = 0. For RDE only, the log
    differences are centred per sample first (scale-free; reading 7).
    """
    if clip is not None and not clip[0] <= clip[1]:
        raise ValueError(f"clip must be (lo, hi) with lo <= hi, got {clip}")
    ode, B, H, W, dtype, device, maps, valid = _prepare(ode_depth, maps, valid, size, min_depth)
    gt, mask = check_depth(gt, mask, name="gt")
    if tuple(gt.shape) != (B, 1, H, W):
        raise ValueError(f"gt shape {tuple(gt.shape)} does not match the fusion output (B, 1, H, W) = {(B, 1, H, W)}")
    targets = {k: log_level(gt.to(device), mask.to(device), k) for k in RELATIVE_SCALES}
    fitted: dict[str, float] = {}

    def choose(name, k, X, D):
        T, m = targets[k]
        T = T.to(dtype)
        a, b = X - T, D
        if ode is None:  # scale-free: remove each sample's mean log difference
            mf = m.to(dtype)
            cnt = mf.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
            a = a - (a * mf).sum(dim=(1, 2, 3), keepdim=True) / cnt
            b = b - (b * mf).sum(dim=(1, 2, 3), keepdim=True) / cnt
        g = weighted_median_gamma(a[m], b[m])
        g = 0.0 if g is None else g
        if clip is not None:
            g = min(max(g, float(clip[0])), float(clip[1]))
        fitted[name] = g
        return g

    _run(ode, B, H, W, dtype, device, maps, valid, choose)
    return {n: fitted[n] for n in GAMMA_NAMES}


__all__ = ["GAMMA_NAMES", "MODULES", "fuse", "fit_gammas", "weighted_median_gamma", "box_delta", "gradient_delta",
           "upsample"]
