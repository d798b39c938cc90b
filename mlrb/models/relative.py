"""The relative depth estimator of Lee & Kim's supplement (S-3, S-4, Fig. S-8).

One shared timm encoder (the paper: PNASNet-5 Large; any timm name or preset, the same
pretrained-weight rules as the ODE model, mlrb.models.encoder) and 16 decoders, one per
relative map (mlrb.relative.RELATIVE_NAMES). Each decoder is Fig. S-8 (a) with n_d = 256
(the paper's choice, so that 16 decoders have about the parameters of one n_d = 1024 ODE
decoder): a 1x1 conv n_e -> n_d, 5 up-sample blocks (Fig. S-8 (b), mlrb.models.ode)
halving the channels, a 3x3 conv to one channel. "For the decoders for maps at scale k, we
eliminate the bilinear interpolation U from the last k up-sample blocks": the decoder of
scale k up-samples 5 - k times (a 9x12 encoder map becomes 72x96 at k = 2, stays 9x12 at
k = 5), its last k blocks are the same two convs without U.

The output has no activation (relative maps are signed). Input sizes that are not a
multiple of 32 give maps resized (bilinear) to the loss space's level size of scale k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlrb.models.encoder import DEFAULT_MODEL, IMAGENET_MEAN, IMAGENET_STD, create_encoder
from mlrb.models.ode import Decoder, ModelInfo
from mlrb.reference import level_shape
from mlrb.relative.maps import RELATIVE_NAMES

RDE_N_D = 256  # supplement S-4


class RelativeDepthNet(nn.Module):
    """Shared encoder + one decoder per relative map.

    ``forward(image)`` takes RGB in [0, 1], (B, 3, H, W), and returns a dict
    name -> (B, 1, h_k, w_k) for the names of ``names`` (default the 16 RELATIVE_NAMES).
    """

    def __init__(self, encoder: nn.Module, n_e: int, n_d: int = RDE_N_D, *, names=RELATIVE_NAMES,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, info: ModelInfo | None = None):
        super().__init__()
        names = tuple(names)
        unknown = [n for n in names if n not in RELATIVE_NAMES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"names must be distinct relative map names from {RELATIVE_NAMES}; got {names}")
        self.names = names
        self.encoder = encoder
        # ModuleDict keys cannot contain '.'; '@' is fine.
        self.scales = {n: int(n.split("@")[1]) for n in names}
        # Fig. S-8 (a) for a map at scale k: the last k blocks do not up-sample (S-4). Its output
        # starts near 0, the mean of every relative map.
        self.decoders = nn.ModuleDict({n: Decoder(n_e, n_d, plain_last=k) for n, k in self.scales.items()})
        self.info = info
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        feat = self.encoder(x)[-1]
        H, W = image.shape[-2:]
        out = {}
        for name, dec in self.decoders.items():
            r = dec(feat)
            size = level_shape(H, W, self.scales[name])
            if tuple(r.shape[-2:]) != size:
                r = F.interpolate(r, size=size, mode="bilinear", align_corners=False)
            out[name] = r
        return out


def build_relative_model(name: str = DEFAULT_MODEL, *, n_d: int = RDE_N_D, pretrained: str | None = None,
                         random_if_missing: bool = False, names=RELATIVE_NAMES) -> RelativeDepthNet:
    """RelativeDepthNet with encoder ``name`` (preset or timm name); weights as build_model."""
    encoder, enc = create_encoder(name, pretrained=pretrained, random_if_missing=random_if_missing)
    info = ModelInfo(name=name, timm_name=enc.timm_name, n_e=enc.channels[-1], n_d=n_d,
                     reduction=enc.reductions[-1], pretrained=enc.pretrained)
    return RelativeDepthNet(encoder, info.n_e, n_d, names=names, mean=enc.mean, std=enc.std, info=info)
