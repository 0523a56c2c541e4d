"""Building a model without its weights: parameters on the meta device, buffers real.

A 3B-parameter LMM built the ordinary way allocates and random-initialises 13 GB of float32 on
every rank, only for the pretrained weights to overwrite it. Under `parameters_on_meta()` every
parameter is created on the meta device (no memory, no init cost) while buffers are computed as
usual: the non-persistent ones (rotary `inv_freq`, SigLIP's `position_ids`, attention masks) are
in no state dict and no weight file, so they must be right from construction.

Under `deferred_weights()` the components that read pretrained files (lmm.model.llm,
lmm.model.vision) build from the pretrained config only and record where their weights are;
`lmm.model.weights` reads them later, once.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

_DEFERRED = contextvars.ContextVar("lmm_deferred_weights", default=False)


def weights_deferred() -> bool:
    """True while a component should build its architecture and leave the weights for later."""
    return _DEFERRED.get()


@contextlib.contextmanager
def deferred_weights(enabled: bool = True):
    token = _DEFERRED.set(enabled)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


_META = contextvars.ContextVar("lmm_parameters_on_meta", default=False)
_register_parameter = nn.Module.register_parameter


def _register_on_meta(module, name, param):
    if _META.get() and param is not None and not param.is_meta:
        param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _register_parameter(module, name, param)


@contextlib.contextmanager
def parameters_on_meta(enabled: bool = True):
    """Every parameter registered inside is moved to the meta device as it is registered
    (`enabled=False` inside an enabled block builds for real again).

    Modules create a parameter with `torch.empty` (lazy, untouched pages) and initialise it after
    registration, so the init runs on meta and costs nothing. Buffers stay on the CPU: the whole
    `torch.device("meta")` context would leave them garbage after `to_empty`."""
    token = _META.set(enabled)
    install = nn.Module.register_parameter is not _register_on_meta
    if install:
        nn.Module.register_parameter = _register_on_meta
    try:
        yield
    finally:
        _META.reset(token)
        if install:
            nn.Module.register_parameter = _register_parameter


def meta_keys(model: nn.Module) -> list[str]:
    """State-dict keys of tensors still on the meta device (what remains to be loaded)."""
    return [k for k, v in model.state_dict(keep_vars=True).items() if v.is_meta]


def buffers_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer (persistent or not) by name, cloned: `to_empty` wipes them all."""
    return {name: b.detach().clone() for name, b in model.named_buffers() if not b.is_meta}


def restore_buffers(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in snapshot.items():
            buffers[name].copy_(value.to(buffers[name].device))
