"""The depth map decomposition network of Jun et al. (ECCV 2022), Sec. 3.2-3.3, 4.3, Fig. 2.

A shared encoder and three decoders: G-Net (gradient maps G_x, G_y), N-Net (the
normalized depth map N) and M-Net (the inverse metric depth m of Eq. 12).

Encoder: a timm backbone (the paper: EfficientNet-B5, ``tf_efficientnet_b5``, the TF
weights the paper used) giving the 2048-channel conv_head features at stride 32 (16x12 at a
512x384 input) and skip features of its last four stages (strides 4, 8, 16, 32).

Each decoder (Fig. 2(b)), with width n_d = 1024:

* channel attention (squeeze-and-excitation) then a 1x1 conv on the head features
  (2048 -> n_d), and channel attention on each skip feature, per decoder (Sec. 3.2);
* up-sampling blocks 1-4: bilinear resizing to the next skip's size, concatenation with it,
  two 3x3 convs, each with BN and LeakyReLU (the public code's blocks; the paper says
  "two 3x3 convs with ReLU"); widths n_d -> n_d/2 -> ... -> n_d/16;
* up-sampling block 5: bilinear x2, two 3x3 convs + ReLU (n_d/16 -> n_d/32), then a 3x3 conv
  to the output (2, 1 or 1 channels).

Resolutions at 384x512: block 1 fuses the last encoder stage, which has the same stride
(32) as the head, so it does not up-sample: 12x16 -> 12x16 -> 24x32 -> 48x64 -> 96x128
(MDR: 8x8 patches give the paper's 12x16 = 192 vectors and 191 x 96 x 128 features) ->
192x256. The output (half resolution) is up-sampled bilinearly to the input size. This is
the only reading where Sec. 3.3's 96x128 and 192 patches hold with five blocks, and it is
what the public code does (its first block interpolates to the stride-32 skip).

Feature transfer (Eq. 6, omega_G = omega_N = 1): the input of each of the first four
blocks of N-Net adds G-Net's feature at the same stage (the 1x1-conv output for block 1,
block k's output for block k+1); M-Net adds N-Net's the same way. The MDR block
(:mod:`mlrb.models.mdr`) sits between M-Net's blocks 4 and 5; its mu_M is added to M-Net's
output.

Variants (Tables 3, 4): ``decoders`` is a subset of "gnm" ("gn": phase 1 without M-Net;
"m": the paper's 'Baseline'), ``mdr`` is "full", "no-mu" (MDR*) or "none".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrb.models.dmd_losses import metric_depth
from mlrb.models.encoder import create_encoder
from mlrb.models.mdr import MDR, NUM_QUERIES, PATCH
from mlrb.models.ode import UpBlock

PAPER_ENCODER = "tf_efficientnet_b5"
PAPER_SIZE = (384, 512)  # H, W (the paper's "512 x 384")
SKIP_INDICES = (1, 2, 3, 4)  # timm feature levels at strides 4, 8, 16, 32
MDR_MODES = ("full", "no-mu", "none")
OUT_CHANNELS = {"g": 2, "n": 1, "m": 1}


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al.), applied before each skip (Sec. 3.2)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean(dim=(2, 3), keepdim=True))


class SkipBlock(nn.Module):
    """Up-sampling blocks 1-4: resize to the skip, concatenate, two 3x3 conv + BN + LeakyReLU."""

    def __init__(self, n_in: int, n_skip: int, n_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(n_in + n_skip, n_out, 3, padding=1), nn.BatchNorm2d(n_out), nn.LeakyReLU(),
            nn.Conv2d(n_out, n_out, 3, padding=1), nn.BatchNorm2d(n_out), nn.LeakyReLU(),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.net(torch.cat([x, skip], dim=1))


class DecoderNet(nn.Module):
    """One of G-Net, N-Net, M-Net (Fig. 2(b)); M-Net holds the MDR block."""

    def __init__(self, n_head: int, skip_channels: tuple[int, ...], n_d: int, out_channels: int,
                 mdr: MDR | None = None):
        super().__init__()
        self.head_attention = ChannelAttention(n_head)
        self.head_conv = nn.Conv2d(n_head, n_d, kernel_size=1)
        deep_first = tuple(reversed(skip_channels))
        self.skip_attention = nn.ModuleList(ChannelAttention(c, 16 if c >= 64 else 8) for c in deep_first)
        self.blocks = nn.ModuleList(SkipBlock(n_d >> i, c, n_d >> (i + 1)) for i, c in enumerate(deep_first))
        self.mdr = mdr
        self.last = UpBlock(n_d >> 4, n_d >> 5)
        self.conv_out = nn.Conv2d(n_d >> 5, out_channels, kernel_size=3, padding=1)
        for mod in [self.head_conv, *self.blocks, self.last]:
            for m in mod.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_out.weight, std=1e-3)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, head: Tensor, skips: list[Tensor], transfer: list[Tensor] | None = None
                ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """(output at half resolution, own features of the four transfer stages, mu or None).

        ``skips`` shallow to deep; ``transfer``: the previous decoder's four stage features,
        added before blocks 1-4 (Eq. 6).
        """
        x = self.head_conv(self.head_attention(head))
        own = []
        for k, (block, attention) in enumerate(zip(self.blocks, self.skip_attention)):
            own.append(x)
            if transfer is not None:
                x = x + transfer[k]
            x = block(x, attention(skips[-1 - k]))
        mu = None
        if self.mdr is not None:
            x, mu = self.mdr(x)
        return self.conv_out(self.last(x)), own, mu


@dataclass
class DMDInfo:
    name: str
    timm_name: str
    decoders: str
    mdr: str
    n_d: int
    mdr_patch: int
    mdr_queries: int
    head_channels: int
    skip_channels: tuple[int, ...]
    pretrained: str
    reduction: int = 32  # stride of the head features (the trainer checks BatchNorm's batch with it, as for ode)


class DMDNet(nn.Module):
    """Encoder + G-Net / N-Net / M-Net.

    ``forward(image)`` takes RGB in [0, 1], (B, 3, H, W), and returns a dict with the
    decoders' outputs at the input size: "G" (B, 2, H, W) = (G_x, G_y), "N" (B, 1, H, W),
    "m" (B, 1, H, W) inverse depth (mu_M included) and "mu" (B,) when MDR has its mean
    branch. :meth:`depth` gives metres (Eq. 12 inverted).
    """

    def __init__(self, encoder: nn.Module, head_channels: int, skip_channels: tuple[int, ...], *,
                 decoders: str = "gnm", mdr: str = "full", n_d: int = 1024, mdr_patch: int = PATCH,
                 mdr_queries: int = NUM_QUERIES, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 info: DMDInfo | None = None):
        super().__init__()
        decoders = "".join(c for c in "gnm" if c in decoders.lower())
        if not decoders or len(decoders) != len(set(decoders)):
            raise ValueError(f"decoders must be a non-empty subset of 'gnm', got {decoders!r}")
        if mdr not in MDR_MODES:
            raise ValueError(f"mdr must be one of {MDR_MODES}, got {mdr!r}")
        if len(skip_channels) != 4:
            raise ValueError(f"DMD needs 4 skip feature maps (strides 4..32), got {len(skip_channels)}")
        if n_d < 32 or n_d % 32:
            raise ValueError(f"n_d must be a positive multiple of 32 (it is halved 5 times), got {n_d}")
        if "m" not in decoders:
            mdr = "none"
        self.decoders, self.mdr_mode, self.info = decoders, mdr, info
        self.encoder = encoder
        nets = {}
        for d in decoders:
            block = None
            if d == "m" and mdr != "none":
                block = MDR(n_d >> 4, patch=mdr_patch, num_queries=mdr_queries, mu=mdr == "full")
            nets[d] = DecoderNet(head_channels, tuple(skip_channels), n_d, OUT_CHANNELS[d], block)
        self.nets = nn.ModuleDict(nets)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def init_output_depth(self, depth: float) -> None:
        """Start M-Net near ``depth`` metres: mu_M's last layer (small weights, bias) or, without
        the mean branch, M-Net's output bias starts at 1/(depth+1)."""
        if not depth > 0:
            raise ValueError(f"depth must be > 0, got {depth}")
        if "m" not in self.nets:
            return
        m0 = 1.0 / (depth + 1.0)
        net = self.nets["m"]
        if net.mdr is not None and net.mdr.regressor is not None:
            net.mdr.regressor[-1].bias.fill_(m0)
            nn.init.normal_(net.mdr.regressor[-1].weight, std=1e-3)  # mu_M starts at m0, not m0 + noise
            net.conv_out.bias.zero_()
        else:
            net.conv_out.bias.fill_(m0)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        *skips, head = self.encoder(x)
        size = image.shape[-2:]
        out: dict[str, Tensor] = {}
        transfer = None
        for d, key in (("g", "G"), ("n", "N"), ("m", "m")):
            if d not in self.nets:
                continue
            # G feeds N, N feeds M; without N, M gets no transfer (the 'Baseline').
            use = transfer if (d == "n" and "g" in self.nets) or (d == "m" and "n" in self.nets) else None
            y, transfer, mu = self.nets[d](head, skips, use)
            if mu is not None:
                y = y + mu.view(-1, 1, 1, 1)  # mu_M added back at the end of M-Net (Sec. 3.3)
                out["mu"] = mu
            out[key] = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
        return out

    def depth(self, image: Tensor, min_depth: float = 1e-3, max_depth: float = 10.0) -> Tensor:
        """Depth in metres, (B, 1, H, W): 1/m - 1 clamped to [min_depth, max_depth]."""
        if "m" not in self.nets:
            raise ValueError("this DMD network has no M-Net (phase 1); it predicts no metric depth")
        return metric_depth(self(image)["m"].float(), min_depth, max_depth)

    def param_counts(self) -> dict[str, int]:
        """Parameters per component, as in Table 6 (M-Net without its MDR block)."""
        count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
        out = {"encoder": count(self.encoder)}
        for d, net in self.nets.items():
            n = count(net)
            if net.mdr is not None:
                out["MDR"] = count(net.mdr)
                n -= out["MDR"]
            out[d.upper()] = n
        out["total"] = count(self)
        return out


def mdr_queries_for(size: tuple[int, int], patch: int = PATCH) -> int:
    """The paper's 191 queries, fewer if an input of ``size`` gives fewer than 192 patches
    at stride 4 (one patch regresses mu_M)."""
    if int(patch) < 1:  # 0 would divide by zero below; a negative one gives a meaningless count
        raise ValueError(f"the MDR patch size (--mdr-patch) must be >= 1, got {patch}")
    h, w = int(size[0]) // 4, int(size[1]) // 4
    patches = (h // patch) * (w // patch)
    if patches < 2:
        raise ValueError(f"an input of {size[0]}x{size[1]} gives {patches} MDR patch(es) of {patch}x{patch} at "
                         f"stride 4; MDR needs at least 2: use a smaller MDR patch (--mdr-patch) or a larger "
                         f"input (--size)")
    return min(NUM_QUERIES, patches - 1)


def build_dmd(name: str = PAPER_ENCODER, *, decoders: str = "gnm", mdr: str = "full", n_d: int = 1024,
              size: tuple[int, int] = PAPER_SIZE, mdr_patch: int = PATCH, mdr_queries: int | None = None,
              pretrained: str | None = None, random_if_missing: bool = False) -> DMDNet:
    """The DMD network with encoder ``name`` (any timm model with forward_intermediates).

    ``size`` (H, W) is the training input size; it sets the number of MDR queries when
    ``mdr_queries`` is None (191 at 384x512). ``pretrained``, ``random_if_missing`` as in
    :func:`mlrb.models.encoder.create_encoder`.
    """
    encoder, enc = create_encoder(name, pretrained=pretrained, random_if_missing=random_if_missing,
                                  out_indices=SKIP_INDICES, with_head=True)
    has_mdr = "m" in decoders.lower() and mdr != "none"
    if mdr_queries is None:
        mdr_queries = mdr_queries_for(size, mdr_patch) if has_mdr else NUM_QUERIES
    info = DMDInfo(name=name, timm_name=enc.timm_name, decoders=decoders, mdr=mdr, n_d=n_d, mdr_patch=mdr_patch,
                   mdr_queries=mdr_queries, head_channels=enc.channels[-1], skip_channels=enc.channels[:-1],
                   pretrained=enc.pretrained, reduction=enc.reductions[-1])
    return DMDNet(encoder, enc.channels[-1], enc.channels[:-1], decoders=decoders, mdr=mdr, n_d=n_d,
                  mdr_patch=mdr_patch, mdr_queries=mdr_queries, mean=enc.mean, std=enc.std, info=info)
