"""The depth estimator of Lee & Kim (ECCV 2020): a timm encoder and the decoder of Fig. S-8.

Encoder: any timm backbone created with ``features_only=True``; only its last (stride 32)
feature map is used (288x384 input -> 9x12 features, Sec. 4.1).
Decoder (supplement, Fig. S-8 (a)): a 1x1 conv from the n_e encoder channels to n_d,
then 5 up-sample blocks, each a bilinear x2 followed by two 3x3 conv + ReLU that halve
the channels (Fig. S-8 (b)), then a 3x3 conv to one channel: the depth map D^0 at the
input resolution. n_d = 1024 for ordinary depth estimation.

The encoder (timm, local weights only) comes from mlrb.models.encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlrb.models.encoder import DEFAULT_MODEL, IMAGENET_MEAN, IMAGENET_STD, create_encoder

NUM_UP_BLOCKS = 5


class UpBlock(nn.Module):
    """Fig. S-8 (b): bilinear x2, then 3x3 conv + ReLU to n_i/2, then 3x3 conv + ReLU.

    ``upsample=False``: the same block without the bilinear x2 (the relative-map decoders, S-4).
    """

    def __init__(self, n_in: int, n_out: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.conv_a = nn.Conv2d(n_in, n_out, kernel_size=3, padding=1)
        self.conv_b = nn.Conv2d(n_out, n_out, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            # align_corners=True as in the paper's public decoder.
            x = F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=True)
        return F.relu(self.conv_b(F.relu(self.conv_a(x))))


class Decoder(nn.Module):
    """Fig. S-8 (a): 1x1 conv n_e -> n_d, 5 up-sample blocks halving channels, 3x3 conv -> 1."""

    def __init__(self, n_e: int, n_d: int = 1024, num_blocks: int = NUM_UP_BLOCKS, plain_last: int = 0):
        """``plain_last``: how many of the last blocks skip the bilinear x2 (S-4: k for the
        decoder of a relative map at scale k); 0 for the depth map D^0."""
        super().__init__()
        if n_d < 2 ** num_blocks or n_d % 2 ** num_blocks:
            raise ValueError(f"n_d must be a positive multiple of {2 ** num_blocks} (it is halved {num_blocks} times); got {n_d}")
        if not 0 <= plain_last <= num_blocks:
            raise ValueError(f"plain_last must be in 0..{num_blocks}, got {plain_last}")
        self.conv_in = nn.Conv2d(n_e, n_d, kernel_size=1)
        self.blocks = nn.Sequential(*[UpBlock(n_d >> i, n_d >> (i + 1), upsample=i < num_blocks - plain_last)
                                      for i in range(num_blocks)])
        self.conv_out = nn.Conv2d(n_d >> num_blocks, 1, kernel_size=3, padding=1)
        # He initialisation keeps the activations' scale through the ten ReLU convs (PyTorch's
        # default shrinks it ~3x per layer, leaving a random decoder's output ~1e-3 and
        # training from scratch very slow); the output starts near a constant depth, see
        # DepthNet.init_output_depth.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_out.weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.blocks(self.conv_in(x)))


@dataclass
class ModelInfo:
    name: str
    timm_name: str
    n_e: int
    n_d: int
    reduction: int
    pretrained: str


class DepthNet(nn.Module):
    """Encoder-decoder depth estimator.

    ``forward(image)`` takes RGB in [0, 1] of shape (B, 3, H, W) (normalised here with the
    encoder's statistics) and returns depth of shape (B, 1, H, W). ``head`` is "linear"
    (the paper's plain conv output) or "softplus" (strictly positive, needed by losses on
    log depth such as the AMLR pair).
    """

    def __init__(self, encoder: nn.Module, n_e: int, n_d: int, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 head: str = "linear", info: ModelInfo | None = None):
        super().__init__()
        if head not in ("linear", "softplus"):
            raise ValueError(f"head must be 'linear' or 'softplus', got {head!r}")
        self.encoder = encoder
        self.decoder = Decoder(n_e, n_d)
        self.head = head
        self.info = info
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def init_output_depth(self, depth: float) -> None:
        """Start the prediction near ``depth`` metres (e.g. the training set's mean depth)
        by setting the bias of the last conv; its weights start small."""
        if not depth > 0:
            raise ValueError(f"depth must be > 0, got {depth}")
        bias = depth if self.head == "linear" else math.log(math.expm1(depth))  # softplus^-1
        self.decoder.conv_out.bias.fill_(bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        depth = self.decoder(self.encoder(x)[-1])
        if depth.shape[-2:] != image.shape[-2:]:
            # Input sizes that are not multiples of 32 (or backbones with padding) give a
            # slightly different decoder output; bring D^0 back to the input grid.
            depth = F.interpolate(depth, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return F.softplus(depth) if self.head == "softplus" else depth


def build_model(name: str = DEFAULT_MODEL, *, n_d: int = 1024, pretrained: str | None = None,
                random_if_missing: bool = False, head: str = "linear", input_size: tuple[int, int] | None = None,
                model_kwargs: dict | None = None) -> DepthNet:
    """Build the depth estimator with encoder ``name`` (a preset or any timm model name).

    ``pretrained``, ``random_if_missing``, ``input_size`` (the training size, for encoders
    with a fixed input size) and ``model_kwargs`` as in :func:`mlrb.models.encoder.create_encoder`.
    """
    encoder, enc = create_encoder(name, pretrained=pretrained, random_if_missing=random_if_missing,
                                  input_size=input_size, model_kwargs=model_kwargs)
    info = ModelInfo(name=name, timm_name=enc.timm_name, n_e=enc.channels[-1], n_d=n_d,
                     reduction=enc.reductions[-1], pretrained=enc.pretrained)
    return DepthNet(encoder, info.n_e, n_d, mean=enc.mean, std=enc.std, head=head, info=info)
