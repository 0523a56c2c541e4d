"""Which parameters a stage trains: a tune mode per module (vision, connector, llm).

A module's mode is a name or a mapping with options:
    frozen                                   nothing trains
    full                                     everything trains
    {mode: partial, frozen_layers: N}        the first N transformer blocks and everything before
                                             them (embeddings) stay frozen; the later blocks and
                                             anything after them (LLM final norm and head) train
    {mode: lora, r: 8, alpha: 16, ...}       the module's weights stay frozen; LoRA adapters (peft)
                                             are injected into its linear layers and train
TinyLLaVA's `share` pretrain is `vision: {mode: partial, frozen_layers: 12}`: an explicit, logged
choice rather than a silent difference between a paper and its script.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

MODULES = ("vision", "connector", "llm")
MODES = ("frozen", "full", "partial", "lora")
OPTIONS = {"frozen": set(), "full": set(), "partial": {"frozen_layers"},
           "lora": {"r", "alpha", "dropout", "target_modules"}}


def parse_mode(name: str, spec) -> tuple[str, dict]:
    """`"full"` or `{mode: partial, frozen_layers: 12}` -> (mode, options), checked."""
    options = dict(spec) if isinstance(spec, Mapping) else {"mode": spec}
    mode = options.pop("mode", None)
    if mode not in MODES:
        raise ValueError(f"unknown tune mode {mode!r} for {name}; valid: {list(MODES)}")
    unknown = sorted(set(options) - OPTIONS[mode])
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for tune mode {mode!r} of {name}; valid: {sorted(OPTIONS[mode])}")
    if mode == "partial" and "frozen_layers" not in options:
        raise ValueError(f"tune mode 'partial' of {name} needs frozen_layers (how many leading blocks stay frozen)")
    return mode, options


def _partial(name: str, module: nn.Module, frozen_layers: int) -> None:
    layers = getattr(module, "layers", None)
    if layers is None:
        raise ValueError(f"tune mode 'partial' needs a module with transformer blocks; {name} "
                         f"({type(module).__name__}) has none: use frozen, full or lora")
    if not 0 <= frozen_layers <= len(layers):
        raise ValueError(f"{name} has {len(layers)} blocks; frozen_layers={frozen_layers} is out of 0..{len(layers)}")
    module.requires_grad_(False)
    for layer in list(layers)[frozen_layers:]:
        layer.requires_grad_(True)
    for out in getattr(module, "output_modules", list)():  # LLM: final norm and LM head
        out.requires_grad_(True)


def _lora(name: str, module: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
          target_modules: str | list[str] = "all-linear") -> None:
    from peft import LoraConfig, inject_adapter_in_model

    # The LLM's HF model is the injection root, so peft's "all-linear" knows to skip the LM head.
    root = getattr(module, "lora_root", lambda: module)()
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules)
    inject_adapter_in_model(config, root)
    _materialise_adapters(root)
    for param_name, param in module.named_parameters():
        param.requires_grad_("lora_" in param_name)
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"LoRA target_modules={target_modules!r} matched no layer of {name}")


def _materialise_adapters(root: nn.Module) -> None:
    """peft creates adapters on their base layer's device: on a meta-built model (weights read
    later, lmm.model.lazy) that is meta too. The adapters are not in any file, so they get real
    memory and peft's own initialisation here (A random, B zero: the model starts unchanged)."""
    from peft.tuners.lora import LoraLayer

    for layer in root.modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter in list(layer.lora_A):
            if layer.lora_A[adapter].weight.is_meta:
                layer.lora_A[adapter].to_empty(device="cpu")
                layer.lora_B[adapter].to_empty(device="cpu")
                layer.reset_lora_parameters(adapter, True)


def apply_tuning(model: nn.Module, tune: Mapping) -> dict[str, int]:
    """Set requires_grad per module (injecting LoRA adapters where asked); returns the trainable
    parameter count per module."""
    unknown = sorted(set(tune) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown module(s) {unknown} in tune; valid: {list(MODULES)}")
    counts = {}
    for name in MODULES:
        module = getattr(model, name)
        mode, options = parse_mode(name, tune.get(name, "frozen"))
        if mode in ("frozen", "full"):
            module.requires_grad_(mode == "full")
        elif mode == "partial":
            _partial(name, module, **options)
        else:
            _lora(name, module, **options)
        counts[name] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if not any(counts.values()):
        raise ValueError(f"tune {dict(tune)} trains nothing")
    return counts


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def merged_lora_state(model: nn.Module, state: dict) -> dict:
    """A state dict (e.g. the full one gathered from FSDP2 shards) with every LoRA adapter folded
    into its base weight, W + scaling * B @ A, under the plain layer's keys: export writes this
    without rebuilding an unsharded model."""
    from peft.tuners.lora import LoraLayer

    state = dict(state)
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        if getattr(layer, "use_dora", {}) and any(layer.use_dora.values()):
            raise NotImplementedError(f"{name}: DoRA adapters are not merged by export")
        weight = state.pop(f"{name}.base_layer.weight").float()
        for adapter in list(layer.lora_A):
            a = state.pop(f"{name}.lora_A.{adapter}.weight").float()
            b = state.pop(f"{name}.lora_B.{adapter}.weight").float()
            delta = (b @ a) * layer.scaling[adapter]
            weight = weight + (delta.T if getattr(layer, "fan_in_fan_out", False) else delta)
        state[f"{name}.weight"] = weight
        if f"{name}.base_layer.bias" in state:
            state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    leftover = sorted(k for k in state if "lora_" in k or ".base_layer." in k)
    if leftover:
        raise ValueError(f"LoRA weights of unsupported layers left after merging: {leftover[:5]}")
    return state


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer (peft's merge) and put the plain layer back, so
    the model's state dict has the original keys again: exported checkpoints carry no adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    return model
