"""Parallelism applied inside the model: FSDP2 sharding and activation checkpointing.

Lightning's `ModelParallelStrategy` sets up the device mesh and leaves the wrapping to the
module's `configure_model`, which calls `shard_fsdp2`: every vision block and every decoder layer
becomes its own FSDP2 unit (all-gathered just before it runs, freed after), and the root unit
holds the rest (patch/token embeddings, connector, LM head). Frozen parameters are fine in FSDP2:
it shards per parameter, so a unit may mix frozen and trained ones.
"""
from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, None: None}


def _dtype(name: str | None, what: str) -> torch.dtype | None:
    if name not in DTYPES:
        raise ValueError(f"unknown {what} {name!r}; valid: {[k for k in DTYPES if k]} or null")
    return DTYPES[name]


def shard_fsdp2(model: nn.Module, mesh, param_dtype: str | None = "bfloat16", reduce_dtype: str | None = "float32",
                reshard_after_forward: bool = True) -> nn.Module:
    """`param_dtype`: the dtype blocks compute in (weights are all-gathered in it; the sharded
    master weights and the optimiser stay float32); `reduce_dtype`: gradient reduce-scatter dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=_dtype(param_dtype, "param_dtype"),
                                  reduce_dtype=_dtype(reduce_dtype, "reduce_dtype"))
    kwargs = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": reshard_after_forward}
    for component in (model.vision, model.llm):
        for block in component.layers:
            fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of storing them
    (transformers' own mechanism, non-reentrant so frozen inputs and FSDP2 work)."""
    model.llm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_llm_layers(model: nn.Module) -> None:
    """torch.compile each decoder layer in place (`Module.compile`: the module keeps its type, so
    FSDP2 still shards it and checkpoints keep their keys). Per layer, as torchtitan does: the
    layers are alike, so one compiled graph serves them all, and graph breaks stay local."""
    for layer in model.llm.layers:
        layer.compile()
