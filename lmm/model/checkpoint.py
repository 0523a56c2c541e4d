"""Self-describing checkpoints: config.json (component specs) + model.safetensors + tokenizer/.

`load` rebuilds the architecture from the specs alone (no download, no pickle, no remote code:
specs may only name classes inside `lmm`) and then loads the weights strictly.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer"
FORMAT = "lmm-checkpoint"
VERSION = 1


def save_pretrained(model, path) -> Path:
    return write_checkpoint(path, model.spec(), model.state_dict(), model.tokenizer)


def write_checkpoint(path, spec: dict, state: dict[str, torch.Tensor], tokenizer) -> Path:
    """config.json + model.safetensors + tokenizer/, written into a temporary folder beside `path`
    and renamed into place: a kill leaves the old checkpoint or the new one, never half of one,
    and a model memory-mapped from the old file (lmm.load) keeps its pages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        config = {"format": FORMAT, "version": VERSION, **spec}
        config["llm"] = {**config["llm"], "tokenizer": TOKENIZER}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        save_file(_unshared(state), str(tmp / WEIGHTS), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp / TOKENIZER)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One entry per storage (tied weights are stored once, under their first name; loading
    fills the twins), each contiguous, as safetensors requires."""
    out, seen = {}, set()
    for key, value in state.items():
        where = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if value.numel() and where in seen:
            continue
        seen.add(where)
        out[key] = value.detach().contiguous()
    return out


def read_config(path) -> dict:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"{path} is not an lmm checkpoint: no {CONFIG} (made by LMM.save_pretrained)")
    config = json.loads((path / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG} is not an lmm checkpoint config (format={config.get('format')!r})")
    if config.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer lmm (checkpoint version {config['version']} > {VERSION})")
    return config


def load_weights(model, path, modules: list[str] | None = None) -> None:
    """Load a checkpoint's weights into `model`, all of them or only `modules` (e.g. ["connector"]).

    Strict over what is loaded: every selected checkpoint tensor must fit a model tensor and every
    selected model tensor must be given. A model with LoRA adapters injected (keys `x.base_layer.w`
    plus `lora_*`) loads a plain checkpoint: the adapters keep their fresh initialisation.
    """
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {path}: not an lmm checkpoint (made by LMM.save_pretrained)")
    source = load_file(str(path / WEIGHTS))

    def selected(key: str) -> bool:
        return modules is None or key.split(".", 1)[0] in modules

    target = {k: v for k, v in model.state_dict(keep_vars=True).items() if selected(k) and "lora_" not in k}
    plain = {k.replace(".base_layer.", "."): k for k in target}  # checkpoint key -> model key
    unexpected = sorted(k for k in source if selected(k) and k not in plain)
    state = {plain[k]: v for k, v in source.items() if k in plain}
    # safetensors stores a tied tensor once; its twins are filled through the shared storage.
    loaded_ptrs = {target[k].data_ptr() for k in state}
    missing = sorted(k for k in target if k not in state and target[k].data_ptr() not in loaded_ptrs)
    if missing or unexpected or (modules is not None and not state):
        raise ValueError(f"checkpoint {path} does not fit the model (modules {modules or 'all'}): "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            target[key].copy_(value)


def load(path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """`lmm.load(path)`: an LMM in eval mode, ready for `.chat(image, text)`."""
    from lmm.model.lazy import load_on_meta

    path = Path(path)
    config = read_config(path)
    config["llm"]["tokenizer"] = str(path / config["llm"]["tokenizer"])
    # Built on the meta device and given the file's tensors (memory-mapped): no random init, no copy.
    model = load_on_meta({k: config[k] for k in ("vision", "connector", "llm")}, path)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()
