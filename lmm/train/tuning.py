"""Which parameters a stage trains: a tune mode per module (vision, connector, llm)."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

MODULES = ("vision", "connector", "llm")
MODES = ("frozen", "full")


def apply_tuning(model: nn.Module, tune: Mapping[str, str]) -> dict[str, int]:
    """Set requires_grad per module; returns the trainable parameter count per module."""
    unknown = sorted(set(tune) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown module(s) {unknown} in tune; valid: {list(MODULES)}")
    counts = {}
    for name in MODULES:
        mode = tune.get(name, "frozen")
        if mode not in MODES:
            raise ValueError(f"unknown tune mode {mode!r} for {name}; valid: {list(MODES)}")
        module = getattr(model, name)
        module.requires_grad_(mode == "full")
        counts[name] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if not any(counts.values()):
        raise ValueError(f"tune {dict(tune)} trains nothing")
    return counts
