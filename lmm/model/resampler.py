"""Perceiver-style resampler connector: a fixed number of learned queries read the patch features.

The patch features are projected to the resampler width; `num_queries` learned query vectors then
pass through `depth` pre-norm blocks of (cross-attention to the patches, feed-forward), each with a
residual connection. As in Flamingo's resampler, the keys and values of a block are the patches
*and* the queries themselves, so queries also see each other. A final layer norm and a linear map
to the LLM width give `num_queries` visual tokens per image, whatever the encoder's token count
(a CLS token kept or not, any grid). The patches carry the encoder's position embeddings, so no
extra ones are added here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmm.model.connector import ACTIVATIONS
from lmm.model.spec import spec_target


class ResamplerBlock(nn.Module):
    """Pre-norm cross-attention of the queries to [patches; queries], then a feed-forward layer."""

    def __init__(self, width: int, num_heads: int, ffn_mult: int, act: str):
        super().__init__()
        self.num_heads = num_heads
        self.norm_media = nn.LayerNorm(width)
        self.norm_queries = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, ffn_mult * width), ACTIVATIONS[act](),
                                 nn.Linear(ffn_mult * width, width))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, W) -> (N, heads, L, W / heads)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, queries: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        q_in = self.norm_queries(queries)
        k, v = self.to_kv(torch.cat([self.norm_media(media), q_in], dim=1)).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(self._heads(self.to_q(q_in)), self._heads(k), self._heads(v))
        queries = queries + self.to_out(attended.transpose(1, 2).flatten(2))
        return queries + self.ffn(queries)


class ResamplerConnector(nn.Module):
    """(N, T, in_dim) -> (N, num_queries, out_dim) for any T.

    `width` is the resampler's internal width; None (the default) uses the LLM width `out_dim`, so
    the connector scales with the LLM like the MLP connector does and nothing width-like is
    configured per grid cell. `num_heads` must divide the width.
    """

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 64, depth: int = 2, num_heads: int = 8,
                 ffn_mult: int = 4, act: str = "gelu", width: int | None = None):
        super().__init__()
        if num_queries < 1 or depth < 1:
            raise ValueError(f"the resampler needs num_queries >= 1 and depth >= 1, got {num_queries} and {depth}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; valid: {sorted(ACTIVATIONS)}")
        self.config = {"num_queries": num_queries, "depth": depth, "num_heads": num_heads, "ffn_mult": ffn_mult,
                       "act": act, "width": width}  # as given: width None stays "the LLM width"
        width = out_dim if width is None else width
        if width % num_heads:
            raise ValueError(f"resampler num_heads={num_heads} does not divide its width {width} "
                             f"({'the LLM width' if self.config['width'] is None else 'configured'})")
        self.proj_in = nn.Linear(in_dim, width)
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.blocks = nn.ModuleList(ResamplerBlock(width, num_heads, ffn_mult, act) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, out_dim)

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def output_tokens(self, in_tokens: int) -> int:
        return self.num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        media = self.proj_in(x)
        queries = self.queries.to(media.dtype).expand(x.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, media)
        return self.proj_out(self.norm_out(queries))

    def spec(self) -> dict:
        return {"_target_": spec_target(self), **self.config}
