"""Relative depth of images from a trained RDE run ("RDE only" fusion, Table S-5), e.g. for DIW.

``RDEPredictor(run_dir)`` rebuilds RelativeDepthNet from the run's checkpoint; calling it on
an RGB image (H, W, 3) in [0, 1] resizes it to the run's input size (bilinear), predicts the
16 maps and fuses them alone (mlrb.relative.fuse with ode_depth=None) into a relative depth
map at the run's size (depth up to a global scale; larger = farther). The gammas are 1 for
every module unless given (e.g. the "rde_only" gammas that ``mlrb fuse`` fitted).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from mlrb.relative.fusion import GAMMA_NAMES, fuse


class RDEPredictor:
    def __init__(self, run_dir: str, *, checkpoint: str = "last.pt", gammas=None, device: str = "cpu"):
        from mlrb.relative.fuse_cli import build_rde, config_of, load_run

        cfg, state = load_run(run_dir, checkpoint, "rde")
        self.cfg = config_of(cfg)
        self.size = self.cfg.resolved_size()
        self.device = torch.device(device)
        self.model = build_rde(self.cfg, state).to(self.device)
        self.gammas = load_gammas(gammas) if isinstance(gammas, str) else (1.0 if gammas is None else gammas)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        if x.dim() != 3 or x.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3) RGB in [0, 1], got shape {tuple(x.shape)}")
        x = x.permute(2, 0, 1)[None].to(self.device)
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False).clamp(0, 1)
        maps = {n: r.float() for n, r in self.model(x).items()}
        return fuse(None, maps, self.gammas, size=self.size)[0, 0].cpu().numpy()


def load_gammas(path: str) -> dict[str, float]:
    """The "rde_only" gammas of a gammas.json written by ``mlrb fuse`` (or a plain dict over GAMMA_NAMES)."""
    if not os.path.isfile(path):
        raise ValueError(f"gammas file not found: {path}")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read gammas file {path}: {exc}") from None
    g = data.get("rde_only", data) if isinstance(data, dict) else None
    if not isinstance(g, dict) or any(n not in g for n in GAMMA_NAMES):
        raise ValueError(f"{path} holds no gammas over {', '.join(GAMMA_NAMES)} (expected mlrb fuse's gammas.json)")
    return {n: float(g[n]) for n in GAMMA_NAMES}
