"""Connectors: per-token maps from the vision width to the LLM embedding width.

`in_dim` and `out_dim` are never configured: `LMM` passes the vision encoder's and the LLM's
widths, so a connector config is the same for every encoder x LLM cell of a grid.

Every connector maps (N, T, in_dim) -> (N, output_tokens(T), out_dim); the token-wise ones keep T,
others (resampler, pixel shuffle) change it, and `LMM.num_visual_tokens` asks the connector.
"""
from __future__ import annotations

import torch
from torch import nn

from lmm.model.spec import spec_target

ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


class MLPConnector(nn.Sequential):
    """Linear, then (act, Linear) x (depth - 1). depth=2 with GELU is the paper's `mlp2x_gelu`."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, act: str = "gelu", bias: bool = True):
        if depth < 1:
            raise ValueError(f"MLPConnector depth must be >= 1, got {depth}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; valid: {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
        for _ in range(depth - 1):
            layers += [ACTIVATIONS[act](), nn.Linear(out_dim, out_dim, bias=bias)]
        super().__init__(*layers)
        self.depth, self.act, self.bias = depth, act, bias

    def output_tokens(self, in_tokens: int) -> int:
        return in_tokens

    def spec(self) -> dict:
        return {"_target_": spec_target(self), "depth": self.depth, "act": self.act, "bias": self.bias}


class LinearConnector(MLPConnector):
    """A single linear projection (LLaVA-1's connector)."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__(in_dim, out_dim, depth=1, bias=bias)

    def spec(self) -> dict:
        return {"_target_": spec_target(self), "bias": self.bias}


class IdentityConnector(nn.Module):
    """Passes features through; only valid when the vision and LLM widths match."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if in_dim != out_dim:
            raise ValueError(f"identity connector needs equal widths, but vision gives {in_dim} and the LLM takes "
                             f"{out_dim}; use connector=linear or connector=mlp2x_gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def output_tokens(self, in_tokens: int) -> int:
        return in_tokens

    def spec(self) -> dict:
        return {"_target_": spec_target(self)}
