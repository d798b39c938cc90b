"""The depth network of AMLR (Yu & Heo 2023, Sec. III-A, Fig. 2).

Encoder: a Swin Transformer v2 (the paper: Swin-v2-L with the masked-image-modelling
pre-training of Xie et al. [6]; here any timm backbone, Swin-v2 by default), of which
only the last feature map (stride 32) is used: the decoder has no skip connections (the
paper found skip connections worse, Sec. IV-D).
Decoder: Xie et al.'s deconvolution decoder with two of the paper's changes: "we gradually
decreased the channel size in the decoder layers" (Xie et al. drop from 1536 to 32 in the
first deconvolution) and "SiLU activation is applied after each Deconvolution and
Convolution layer". The paper gives no widths; mlrb halves the encoder width at each of
the three 4x4 stride-2 deconvolutions (1536 -> 768 -> 384 -> 192 for Swin-v2-L), then a
3x3 conv to half that (96), bilinear x4 to the input resolution, and a head of 3x3 conv +
SiLU and a 3x3 conv to one channel. Batch norm follows every deconvolution and the conv,
as in Xie et al.'s decoder. Widths never drop below ``min_width``.
Head: depth = max_depth * sigmoid(x), Xie et al.'s bounded output ("the depth range was
defined as 0 to 80 meters", KITTI; 10 m NYUv2): strictly positive, as the log-depth AMLR
losses need.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlrb.models.encoder import create_encoder
from mlrb.models.ode import ModelInfo

DEFAULT_ENCODER = "swinv2_large_window12to24_192to384"
NUM_DECONV = 3


def decoder_widths(n_e: int, min_width: int = 16) -> tuple[int, ...]:
    """Channels after each deconvolution, then after the conv: halving from the encoder width."""
    return tuple(max(n_e >> (i + 1), min_width) for i in range(NUM_DECONV + 1))


class AMLRDecoder(nn.Module):
    """Three (deconv 4x4 /2 up, BN, SiLU) blocks, (conv 3x3, BN, SiLU), bilinear x4, head."""

    def __init__(self, n_e: int, min_width: int = 16):
        super().__init__()
        widths = decoder_widths(n_e, min_width)
        self.widths = widths
        layers: list[nn.Module] = []
        n_in = n_e
        for n_out in widths[:NUM_DECONV]:
            layers += [nn.ConvTranspose2d(n_in, n_out, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(n_out), nn.SiLU()]
            n_in = n_out
        layers += [nn.Conv2d(n_in, widths[-1], kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(widths[-1]),
                   nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(widths[-1], widths[-1], kernel_size=3, padding=1), nn.SiLU(),
                                  nn.Conv2d(widths[-1], 1, kernel_size=3, padding=1))
        nn.init.normal_(self.head[-1].weight, std=1e-3)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.body(x)  # stride 32 -> 4
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(x)


class AMLRNet(nn.Module):
    """Swin-v2 encoder + AMLR decoder; ``forward(image)`` maps RGB in [0, 1] (B, 3, H, W) to
    depth in metres (B, 1, H, W), in (0, max_depth)."""

    def __init__(self, encoder: nn.Module, n_e: int, *, max_depth: float, mean, std, info: ModelInfo | None = None,
                 min_width: int = 16):
        super().__init__()
        if not (math.isfinite(max_depth) and max_depth > 0):
            raise ValueError(f"max_depth must be a positive number, got {max_depth}")
        self.encoder = encoder
        self.decoder = AMLRDecoder(n_e, min_width)
        self.max_depth = float(max_depth)
        self.info = info
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def init_output_depth(self, depth: float) -> None:
        """Start the prediction near ``depth`` metres (bias of the last conv = logit(depth / max_depth))."""
        if not 0 < depth < self.max_depth:
            raise ValueError(f"depth must be in (0, max_depth={self.max_depth}), got {depth}")
        p = depth / self.max_depth
        self.decoder.head[-1].bias.fill_(math.log(p / (1 - p)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        logits = self.decoder(self.encoder(x)[-1], tuple(image.shape[-2:]))
        return self.max_depth * torch.sigmoid(logits)


def build_amlr_model(name: str = DEFAULT_ENCODER, *, max_depth: float = 80.0, pretrained: str | None = None,
                     random_if_missing: bool = False, input_size: tuple[int, int] | None = None,
                     model_kwargs: dict | None = None, min_width: int = 16) -> AMLRNet:
    """The AMLR network with encoder ``name`` (any timm model; the paper's is Swin-v2-L).

    ``pretrained`` etc. as in :func:`mlrb.models.encoder.create_encoder`; ``input_size`` is
    the training crop (Swin-v2 is built for it: 352x1216 KITTI, 448x576 NYUv2).
    """
    encoder, enc = create_encoder(name, pretrained=pretrained, random_if_missing=random_if_missing,
                                  input_size=input_size, model_kwargs=model_kwargs)
    n_e = enc.channels[-1]
    info = ModelInfo(name=name, timm_name=enc.timm_name, n_e=n_e, n_d=decoder_widths(n_e, min_width)[0],
                     reduction=enc.reductions[-1], pretrained=enc.pretrained)
    return AMLRNet(encoder, n_e, max_depth=max_depth, mean=enc.mean, std=enc.std, info=info, min_width=min_width)
