"""Component specs: `{"_target_": "lmm....Class", **kwargs}` dicts that rebuild a component.

Hydra configs and saved checkpoints use the same shape. Building is restricted to classes and
functions inside `lmm`, so a checkpoint's config.json can never name arbitrary code to run.
"""
from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf


def spec_target(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def to_plain(spec) -> dict:
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)


def build(spec: Mapping, **extra):
    """Call the spec's `_target_` with its other keys (not recursively) plus `extra`."""
    spec = to_plain(spec)
    target = spec.pop("_target_", None)
    if not isinstance(target, str) or not target.startswith("lmm."):
        raise ValueError(f"a component spec needs a `_target_` inside the lmm package, got {target!r}")
    return get_object(target)(**spec, **extra)
