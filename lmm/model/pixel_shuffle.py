"""Pixel-shuffle (space-to-depth) connector: fewer, wider visual tokens, then an MLP.

Each `factor x factor` block of neighbouring patches on the square patch grid becomes one token
whose features are the block's patch features side by side (width `in_dim * factor**2`); an MLP
maps that to the LLM width. The LLM sees `factor**2` times fewer visual tokens, which is what
Idefics3 / nanoVLM-style models do to afford high-resolution encoders in a small LLM's context.

Token order (fixed, and what the tests check against `torch.nn.functional.pixel_unshuffle`):
output tokens run over the merged grid row-major (block row, then block column); inside a token
the features are the block's patches row-major, each patch's `in_dim` features contiguous:
    token[r * G + c] = cat(x[f*r + 0, f*c + 0], x[f*r + 0, f*c + 1], ..., x[f*r + f-1, f*c + f-1])
where G = ceil(S / f) for an S x S patch grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmm.model.connector import MLPConnector
from lmm.model.spec import spec_target


def grid_side(tokens: int) -> int:
    """Side of the square patch grid holding `tokens` tokens, or a ValueError saying why not."""
    side = math.isqrt(tokens)
    if tokens < 1 or side * side != tokens:
        raise ValueError(
            f"the pixel-shuffle connector needs a square grid of patch tokens, but the vision encoder gives "
            f"{tokens} tokens (not a perfect square). A kept CLS token (feature_select='cls_patch') breaks the "
            f"grid: use feature_select='patch', or a token-wise connector (mlp2x_gelu, linear) or the resampler")
    return side


class PixelShuffleConnector(nn.Module):
    """(N, S*S, in_dim) -> (N, ceil(S/f)**2, out_dim): space-to-depth by `factor`, then an MLP."""

    def __init__(self, in_dim: int, out_dim: int, factor: int = 2, depth: int = 2, act: str = "gelu"):
        super().__init__()
        if factor < 1:
            raise ValueError(f"pixel-shuffle factor must be >= 1, got {factor}")
        self.factor, self.depth, self.act = factor, depth, act
        self.mlp = MLPConnector(in_dim * factor * factor, out_dim, depth=depth, act=act)

    def output_tokens(self, in_tokens: int) -> int:
        return math.ceil(grid_side(in_tokens) / self.factor) ** 2

    def space_to_depth(self, x: torch.Tensor) -> torch.Tensor:
        """(N, S*S, C) -> (N, G*G, f*f*C) in the token order of the module docstring."""
        n, tokens, channels = x.shape
        side, f = grid_side(tokens), self.factor
        grid = x.reshape(n, side, side, channels)
        padded = math.ceil(side / f) * f
        if padded != side:
            # An odd grid (SigLIP-384: 27 x 27 = 729 patches) does not tile into f x f blocks: pad the
            # bottom rows and right columns with zero features up to a multiple of f (27 -> 28, so
            # 729 -> 196 tokens at f = 2). The blocks on that edge then hold fewer real patches.
            grid = F.pad(grid, (0, 0, 0, padded - side, 0, padded - side))
        g = padded // f
        blocks = grid.reshape(n, g, f, g, f, channels).permute(0, 1, 3, 2, 4, 5)  # (n, row, col, dy, dx, C)
        return blocks.reshape(n, g * g, f * f * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.space_to_depth(x))

    def spec(self) -> dict:
        return {"_target_": spec_target(self), "factor": self.factor, "depth": self.depth, "act": self.act}
