"""Self-describing checkpoints: config.json (component specs) + model.safetensors + tokenizer/.

`load` rebuilds the architecture from the specs alone (no download, no pickle, no remote code:
specs may only name classes inside `lmm`) and then loads the weights strictly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer"
FORMAT = "lmm-checkpoint"
VERSION = 1


def save_pretrained(model, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "version": VERSION, **model.spec()}
    config["llm"]["tokenizer"] = TOKENIZER
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    save_model(model, str(path / WEIGHTS))  # handles tied (shared) weights
    model.tokenizer.save_pretrained(path / TOKENIZER)
    return path


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


def load_weights(model, path, strict: bool = True) -> None:
    missing, unexpected = load_model(model, str(Path(path) / WEIGHTS), strict=strict)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load(path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """`lmm.load(path)`: an LMM in eval mode, ready for `.chat(image, text)`."""
    from lmm.model.lmm import LMM

    path = Path(path)
    config = read_config(path)
    config["llm"]["tokenizer"] = str(path / config["llm"]["tokenizer"])
    model = LMM(vision=config["vision"], connector=config["connector"], llm=config["llm"])
    load_weights(model, path)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()
