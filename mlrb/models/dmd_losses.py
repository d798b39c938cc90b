"""Targets and losses of the DMD network (Jun et al., ECCV 2022, Sec. 3.1 and 3.4).

Targets, per image, from the ground truth and its validity mask:

* ``m = 1 / (m_o + 1)`` (Eq. 12): inverse depth of the metric depth ``m_o`` in metres.
* ``N = (m - mean(m)) / std(m)`` over the valid pixels (Eq. 1). Eq. 1 is written for the
  metric map M, but the paper trains on inverse depth and normalises HR-WSI disparity "by
  (1)", so N is the z-score of the inverse depth (the same orientation as disparity:
  larger = nearer). std is the population one; an image of constant depth gets N = 0.
  For relative-only samples (``metric`` False) the given map is already disparity-like and
  is normalised as it is.
* ``G_x = dx N``, ``G_y = dy N`` (Eq. 4): forward differences, valid where both pixels are;
  stored at H x W with the last column / row invalid.

Losses (Eqs. 7-11), each per sample and masked by the valid ground truth; T is the number
of valid pixels of the sample:

* ``G``      (1/T)(|G^x - G_x|_1 + |G^y - G_y|_1)                               (Eq. 7)
* ``N``      (1/T)|N^ - N|_1                                                      (Eq. 8)
* ``Nx@s``, ``Ny@s``  (1/(T s^2))|d(N^_s) - d(N_s)|_1 for s = 0.5, 0.25, 0.125       (Eq. 9)
* ``M``, ``Mx@s``, ``My@s``  the same on m (Sec. 3.4: "similarly, for M-Net")
* ``mu``     |mu^ - mean(m)|, the MDR estimate against the mean of the valid m   (Eq. 10)
* ``logM``   (1/T)|log m^ - log m|_1                                              (Eq. 11)

``X_s`` is X scaled bilinearly by s (no antialiasing, half-pixel centres). A scaled ground
truth pixel is valid only if every pixel it interpolates is valid. Each scale is its own
loss column, so a weighter can balance them; the paper's loss is the plain sum.

``dmd_losses`` returns the (B, n) losses and a (B, n) bool ``loss_mask`` of the losses
each sample has: M-side losses need metric depth, and a sample without valid pixels has
none. Masked-out entries are 0 with zero gradient.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

SCALES = (0.5, 0.25, 0.125)  # s of Eq. 9


def _grad_names(t: str) -> tuple[str, ...]:
    return tuple(f"{t}{d}@{s:g}" for s in SCALES for d in ("x", "y"))


G_NAMES = ("G",)
N_NAMES = ("N",) + _grad_names("N")
M_NAMES = ("M",) + _grad_names("M")
MU_NAME = "mu"
LOGM_NAME = "logM"
# Every DMD loss, in column order.
DMD_NAMES = G_NAMES + N_NAMES + M_NAMES + (MU_NAME, LOGM_NAME)
# Losses a relative-only (no metric depth) sample has.
RELATIVE_NAMES = frozenset(G_NAMES + N_NAMES)


def dmd_loss_names(*, g: bool = True, n: bool = True, m: bool = True, mu: bool = True,
                   log_m: bool = True) -> tuple[str, ...]:
    """The loss columns of a DMD variant: phase 1 is g+n, 'Baseline' is M, Mx, My only."""
    out: tuple[str, ...] = ()
    if g:
        out += G_NAMES
    if n:
        out += N_NAMES
    if m:
        out += M_NAMES
        if mu:
            out += (MU_NAME,)
        if log_m:
            out += (LOGM_NAME,)
    if not out:
        raise ValueError("a DMD variant needs at least one loss")
    return out


# ---------------------------------------------------------------------- targets
def inverse_depth(depth: Tensor) -> Tensor:
    """m = 1 / (m_o + 1) (Eq. 12), in (0, 1] for depth >= 0."""
    return 1.0 / (depth + 1.0)


def metric_depth(m: Tensor, min_depth: float = 1e-3, max_depth: float = 10.0) -> Tensor:
    """Inverse of Eq. 12 for predictions: m_o = 1/m - 1, clamped to [min_depth, max_depth]
    (m is clamped first, so m <= 0 gives max_depth, not inf or a negative depth)."""
    lo, hi = 1.0 / (max_depth + 1.0), 1.0 / (min_depth + 1.0)
    return 1.0 / m.clamp(lo, hi) - 1.0


def normalize(x: Tensor, mask: Tensor) -> Tensor:
    """Per-image z-score of x (B, 1, H, W) over the valid pixels of mask (Eq. 1); 0 elsewhere."""
    w = mask.to(x.dtype)
    count = w.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * w).sum(dim=(1, 2, 3), keepdim=True) / count
    dev = (x - mean) * w
    std = (dev.square().sum(dim=(1, 2, 3), keepdim=True) / count).sqrt()
    # std = 0 (constant depth): no relative structure, N = 0.
    return torch.where(std > 0, dev / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(dev))


def gradients(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward differences (Eq. 4) at x's size: (gx, gy, valid_x, valid_y).

    gx[..., j] = x[..., j+1] - x[..., j] (last column 0, invalid); gy likewise over rows.
    A difference is valid where both of its pixels are (all of them with mask None).
    """
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    vx = F.pad(mask[..., :, 1:] & mask[..., :, :-1], (0, 1))
    vy = F.pad(mask[..., 1:, :] & mask[..., :-1, :], (0, 0, 0, 1))
    if x.shape[-1] < 2:
        vx = torch.zeros_like(mask)
    if x.shape[-2] < 2:
        vy = torch.zeros_like(mask)
    return gx, gy, vx, vy


def scale(x: Tensor, s: float) -> Tensor:
    """x bilinearly scaled by s (Eq. 9): half-pixel centres, no antialiasing."""
    return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def scale_target(x: Tensor, mask: Tensor, s: float) -> tuple[Tensor, Tensor]:
    """Ground truth scaled by s and its mask: valid where every interpolated pixel is valid."""
    w = scale(mask.to(x.dtype), s)
    return scale(torch.where(mask, x, torch.zeros_like(x)), s), w >= 1.0 - 1e-4


def dmd_targets(depth: Tensor, mask: Tensor | None = None, metric: Tensor | None = None) -> dict[str, Tensor]:
    """The targets of one batch.

    depth: (B, 1, H, W) metric depth in metres (> 0 where valid); for samples whose entry of
        ``metric`` (B,) is False, a relative map oriented like inverse depth (e.g. disparity).
    mask: (B, 1, H, W) bool of valid pixels (default: finite depth > 0 on metric samples,
        finite on relative ones).
    Returns m, N, Gx, Gy, valid, valid_x, valid_y, metric (B,) and T (B,) (valid counts).
    """
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    depth = depth.float()
    b = depth.shape[0]
    metric = torch.ones(b, dtype=torch.bool, device=depth.device) if metric is None else metric.to(depth.device).bool().view(b)
    is_metric = metric.view(b, 1, 1, 1)
    finite = torch.isfinite(depth)
    valid = finite & (~is_metric | (depth > 0))
    if mask is not None:
        if mask.numel() != depth.numel():
            raise ValueError(f"mask must have the shape of depth {tuple(depth.shape)}, got {tuple(mask.shape)}")
        valid = valid & mask.to(depth.device).bool().view_as(depth)
    safe = torch.where(valid, depth, torch.zeros_like(depth))
    m = torch.where(is_metric, inverse_depth(safe.clamp_min(0.0)), safe)
    m = torch.where(valid, m, torch.zeros_like(m))
    n = normalize(m, valid)
    gx, gy, vx, vy = gradients(n, valid)
    return {"m": m, "N": n, "Gx": gx, "Gy": gy, "valid": valid, "valid_x": vx, "valid_y": vy,
            "metric": metric, "T": valid.sum(dim=(1, 2, 3)).to(depth.dtype)}


# ---------------------------------------------------------------------- losses
def _masked_l1(a: Tensor, b: Tensor, valid: Tensor) -> Tensor:
    """Per-sample sum of |a - b| over valid pixels, (B,)."""
    d = (a - b).abs()
    return torch.where(valid, d, torch.zeros_like(d)).sum(dim=(1, 2, 3))


def _gradient_sums(pred: Tensor, target: Tensor, valid: Tensor, s: float) -> tuple[Tensor, Tensor]:
    """Per-sample sums of |dx(pred_s) - dx(target_s)| and of the dy term at scale s."""
    p = scale(pred, s)
    t, v = scale_target(target, valid, s)
    pgx, pgy, _, _ = gradients(p)
    tgx, tgy, vx, vy = gradients(t, v)
    return _masked_l1(pgx, tgx, vx), _masked_l1(pgy, tgy, vy)


def _map_losses(prefix: str, pred: Tensor, target: Tensor, valid: Tensor, T: Tensor,
                wanted: Iterable[str]) -> dict[str, Tensor]:
    """L_X (Eq. 8) and L_Xx@s, L_Xy@s (Eq. 9) for X = N or M, only the wanted ones."""
    wanted = set(wanted)
    out: dict[str, Tensor] = {}
    if prefix in wanted:
        out[prefix] = _masked_l1(pred, target, valid) / T
    for s in SCALES:
        nx, ny = f"{prefix}x@{s:g}", f"{prefix}y@{s:g}"
        if nx in wanted or ny in wanted:
            sx, sy = _gradient_sums(pred, target, valid, s)
            out[nx], out[ny] = sx / (T * s * s), sy / (T * s * s)
    return out


def dmd_losses(pred: dict[str, Tensor], targets: dict[str, Tensor], names: Iterable[str] = DMD_NAMES,
               *, log_eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """The DMD losses of one batch as ((B, n) losses, (B, n) bool loss_mask), in ``names`` order.

    pred: "G" (B, 2, H, W) = (G^x, G^y), "N" (B, 1, H, W), "m" (B, 1, H, W) inverse depth,
        "mu" (B,) or (B, 1) the MDR mean; only the entries the named losses use are needed.
    targets: from :func:`dmd_targets`.
    log_eps: m^ is clamped to at least this inside log (Eq. 11 needs m^ > 0).
    """
    names = tuple(names)
    unknown = [n for n in names if n not in DMD_NAMES]
    if unknown:
        raise ValueError(f"unknown DMD loss names {unknown}; known: {', '.join(DMD_NAMES)}")
    valid, metric = targets["valid"], targets["metric"]
    T_raw = targets["T"]
    has_any = T_raw > 0
    T = T_raw.clamp_min(1.0)
    need = set(names)
    for key, group in (("G", G_NAMES), ("N", N_NAMES), ("m", M_NAMES + (LOGM_NAME,)), ("mu", (MU_NAME,))):
        if need & set(group) and key not in pred:
            raise ValueError(f"losses {sorted(need & set(group))} need the prediction {key!r}")
    b, _, h, w = valid.shape
    for key, ch in (("G", 2), ("N", 1), ("m", 1)):
        if key in pred and tuple(pred[key].shape) != (b, ch, h, w):
            raise ValueError(f"prediction {key!r} must have shape {(b, ch, h, w)}, got {tuple(pred[key].shape)}")
    if "mu" in pred and pred["mu"].numel() != b:
        raise ValueError(f"prediction 'mu' must have {b} entries (one per sample), got shape {tuple(pred['mu'].shape)}")
    values: dict[str, Tensor] = {}
    if "G" in need:
        g = pred["G"].float()
        values["G"] = (_masked_l1(g[:, :1], targets["Gx"], targets["valid_x"])
                       + _masked_l1(g[:, 1:2], targets["Gy"], targets["valid_y"])) / T
    if need & set(N_NAMES):
        values.update(_map_losses("N", pred["N"].float(), targets["N"], valid, T, need))
    if need & (set(M_NAMES) | {MU_NAME, LOGM_NAME}):
        # Relative samples have no m: their M-side losses are masked (computed on an empty mask).
        mvalid = valid & metric.view(-1, 1, 1, 1)
        if need & (set(M_NAMES) | {LOGM_NAME}):
            m_hat = pred["m"].float()
            values.update(_map_losses("M", m_hat, targets["m"], mvalid, T, need))
            if LOGM_NAME in need:
                log_t = torch.where(mvalid, targets["m"], torch.ones_like(m_hat)).log()
                values[LOGM_NAME] = _masked_l1(m_hat.clamp_min(log_eps).log(), log_t, mvalid) / T
        if MU_NAME in need:
            mean_m = (targets["m"] * mvalid).sum(dim=(1, 2, 3)) / T
            values[MU_NAME] = (pred["mu"].float().reshape(-1) - mean_m).abs()
    losses = torch.stack([values[n] for n in names], dim=1)
    cols = [has_any if n in RELATIVE_NAMES else has_any & metric for n in names]
    loss_mask = torch.stack(cols, dim=1)
    losses = torch.where(loss_mask, losses, torch.zeros_like(losses))
    return losses, loss_mask
