"""The mean depth residual (MDR) block of Jun et al. (ECCV 2022), Sec. 3.3, Fig. 3.

A mini-ViT (Bhat et al., AdaBins) on the M-Net features between its fourth and fifth
up-sampling blocks (96x128 at a 384x512 input):

* an 8x8 conv with stride 8 turns the input into patch embeddings (12x16 = 192 of them,
  128-d), plus learnable positional encodings (randomly initialised);
* a transformer encoder (AdaBins' mini-ViT: 4 layers, 4 heads, feed-forward 1024, dropout
  0.1) attends over the patches;
* the first output vector goes through three fully-connected layers (128 -> 256 -> 256 -> 1,
  LeakyReLU between) to the mean mu_M of the (inverse) depth map;
* the other 191 vectors are dot-multiplied with every pixel of a 3x3 conv of the input
  (128-d), giving 191 x 96 x 128 features; a 1x1 conv (as in the public code) maps them
  back to the block's width for the fifth up-sampling block.

``mu=False`` is the paper's MDR* (Table 3): the same block without the mean branch.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

# AdaBins' mini-ViT, which the paper adopts.
EMBED_DIM = 128
NUM_HEADS = 4
NUM_LAYERS = 4
FEEDFORWARD = 1024
PATCH = 8
NUM_QUERIES = 191  # 192 patches at 96x128 minus the one that regresses mu_M
MAX_PATCHES = 500  # rows of the positional-encoding table (AdaBins')


class MDR(nn.Module):
    """MDR block: ``forward(x) -> (features (B, C, h, w), mu (B,) or None)``.

    Args:
        in_channels: C, the width of the M-Net features (and of the returned features).
        patch: patch size of the embedding conv (8 in the paper).
        num_queries: number of patch vectors used as queries (191); the input must give at
            least ``num_queries + 1`` patches.
        mu: regress mu_M from the first vector (False: MDR*).
        embed_dim, num_heads, num_layers, feedforward, max_patches: the mini-ViT.
    """

    def __init__(self, in_channels: int, *, patch: int = PATCH, num_queries: int = NUM_QUERIES, mu: bool = True,
                 embed_dim: int = EMBED_DIM, num_heads: int = NUM_HEADS, num_layers: int = NUM_LAYERS,
                 feedforward: int = FEEDFORWARD, max_patches: int = MAX_PATCHES):
        super().__init__()
        if patch < 1 or num_queries < 1 or max_patches < num_queries + 1:
            raise ValueError(f"need patch >= 1, num_queries >= 1 and max_patches > num_queries; got "
                             f"patch={patch}, num_queries={num_queries}, max_patches={max_patches}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
        self.patch, self.num_queries = int(patch), int(num_queries)
        self.embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch, stride=patch)
        self.positional = nn.Parameter(torch.rand(max_patches, embed_dim))
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=feedforward, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.conv = nn.Conv2d(in_channels, embed_dim, kernel_size=3, padding=1)
        self.project = nn.Conv2d(num_queries, in_channels, kernel_size=1)
        self.regressor = nn.Sequential(
            nn.Linear(embed_dim, 256), nn.LeakyReLU(),
            nn.Linear(256, 256), nn.LeakyReLU(),
            nn.Linear(256, 1),
        ) if mu else None

    def num_patches(self, height: int, width: int) -> int:
        """Patches of an input of height x width (the stride-8 conv floors)."""
        return (height // self.patch) * (width // self.patch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s = self.num_patches(x.shape[-2], x.shape[-1])
        if s < self.num_queries + 1 or s > self.positional.shape[0]:
            raise ValueError(f"MDR input {x.shape[-2]}x{x.shape[-1]} gives {s} patches of {self.patch}x{self.patch}; "
                             f"this block needs {self.num_queries + 1}..{self.positional.shape[0]} (set the MDR "
                             f"patch size / number of queries for this input size)")
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, S, E)
        tokens = self.transformer(tokens + self.positional[:s].to(tokens.dtype))
        queries = tokens[:, 1:self.num_queries + 1]  # (B, Q, E)
        # Every pixel's 3x3-conv feature against every query: (B, Q, h, w).
        attention = torch.einsum("bqe,behw->bqhw", queries, self.conv(x))
        mu = self.regressor(tokens[:, 0]).squeeze(-1) if self.regressor is not None else None
        return self.project(attention), mu
