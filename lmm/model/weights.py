"""Reading a meta-built LMM's weights once, from the files that hold them.

A weight's source is one tensor in a safetensors file: the stage's init checkpoint (an lmm
checkpoint, for the modules it covers) or a component's pretrained files (transformers' folders
or hub snapshots). `sources` maps every parameter still on the meta device to its source and
fails, naming them, when some have none.

Two ways in:
  - `load_plain`: one process. The file tensors become the parameters (memory-mapped, copy-on-
    write: nothing is copied until training writes to a page), so loading costs about one read.
  - `load_sharded`: FSDP2. Rank 0 reads the files a chunk at a time and each chunk is broadcast
    and cut into every rank's shards (`set_model_state_dict(..., broadcast_from_rank0=True)`),
    so rank 0 never holds more than its shards plus one chunk, and the other ranks never read.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lmm.model.meta import restore_buffers

log = logging.getLogger(__name__)

SAFETENSORS, INDEX = "model.safetensors", "model.safetensors.index.json"
CHUNK_BYTES = 512 * 2**20  # per broadcast round under FSDP2: rank 0 holds its shards + one chunk


@dataclass(frozen=True)
class Source:
    file: str
    key: str


def hf_weight_files(pretrained: str) -> dict[str, str] | None:
    """{tensor name: file} of a transformers model's safetensors weights (a local folder or a hub
    id, through the hub cache); None when it has none (e.g. only pytorch_model.bin)."""
    folder = Path(pretrained)
    if folder.is_dir():
        index, single = folder / INDEX, folder / SAFETENSORS
        index = str(index) if index.is_file() else None
        single = str(single) if single.is_file() else None
    else:
        from transformers.utils import cached_file

        def fetch(name):
            return cached_file(pretrained, name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        index = fetch(INDEX)
        single = None if index else fetch(SAFETENSORS)
    if index:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        base = Path(index).parent
        if not folder.is_dir():  # hub: every shard through the cache
            from transformers.utils import cached_file
            files = {f: cached_file(pretrained, f) for f in set(weight_map.values())}
            return {k: files[f] for k, f in weight_map.items()}
        return {k: str(base / f) for k, f in weight_map.items()}
    if single:
        with safe_open(single, "pt") as f:
            return {k: single for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return None


def defers_weights(spec) -> bool:
    """Whether a component spec can be built on meta and its pretrained weights read later: its
    class says it can (`defers_pretrained`) and its pretrained files are safetensors."""
    from hydra.utils import get_object

    cls = get_object(spec["_target_"])
    pretrained = spec.get("pretrained")
    return getattr(cls, "defers_pretrained", False) and pretrained is not None and hf_weight_files(pretrained) is not None


def _hf_candidates(key: str, prefix: str) -> list[str]:
    """A transformers model's key as its files may spell it: as is, without or with the base
    model prefix (a `SiglipVisionModel` reads a `SiglipModel` file, a causal LM its base's)."""
    out = [key]
    if prefix:
        out.append(key[len(prefix) + 1:] if key.startswith(prefix + ".") else f"{prefix}.{key}")
    return out


def hf_sources(hf_model: nn.Module, pretrained: str, at: str, files: dict[str, str] | None = None) -> dict[str, Source]:
    """Sources of `hf_model`'s parameters (keys prefixed `at`) in its pretrained files. Tensors
    the model does not have (a CLIP file's text tower, layers cut after the feature layer) are
    left unread; a parameter missing from the files is an error."""
    files = files if files is not None else hf_weight_files(pretrained)
    if files is None:
        raise FileNotFoundError(f"{pretrained} has no {SAFETENSORS}")
    prefix = getattr(hf_model, "base_model_prefix", "")
    out, missing = {}, []
    for key, _ in hf_model.named_parameters(remove_duplicate=False):
        found = next((k for k in _hf_candidates(key, prefix) if k in files), None)
        if found is None:
            missing.append(key)
        else:
            out[f"{at}{key}"] = Source(files[found], found)
    if missing:
        tied = {k for k in missing if _is_tied(hf_model, k, out, at)}
        missing = [k for k in missing if k not in tied]
    if missing:
        raise KeyError(f"{pretrained}: no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out


def _is_tied(model: nn.Module, key: str, found: dict, at: str) -> bool:
    """Whether `key` shares its parameter with one that has a source (tied embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return any(params[k] is params[key] for k in params if f"{at}{k}" in found)


def checkpoint_sources(model: nn.Module, path, modules: list[str] | None) -> dict[str, Source]:
    """Sources in an lmm checkpoint's model.safetensors for the selected top-level modules, strict
    both ways: a checkpoint tensor the model lacks is an error too (another architecture). LoRA
    layers (`x.base_layer.w`) read the plain checkpoint's `x.w`; their adapters are not read."""
    file = Path(path) / SAFETENSORS
    if not file.is_file():
        raise FileNotFoundError(f"no {SAFETENSORS} in {path}: not an lmm checkpoint (made by LMM.save_pretrained)")
    with safe_open(str(file), "pt") as f:
        names = set(f.keys())

    def selected(key: str) -> bool:
        return modules is None or key.split(".", 1)[0] in modules

    out = {}
    for key in model.state_dict(keep_vars=True):
        plain = key.replace(".base_layer.", ".")
        if selected(key) and "lora_" not in key and plain in names:
            out[key] = Source(str(file), plain)
    used = {s.key for s in out.values()}
    unexpected = sorted(k for k in names if selected(k) and k not in used)
    if unexpected or not out:
        raise ValueError(f"checkpoint {path} does not fit the model (modules {modules or 'all'}): "
                         f"unexpected {unexpected[:5]}")
    return out


def follow_renames(model: nn.Module, sources: dict[str, Source]) -> dict[str, Source]:
    """Sources keyed by the model's current names: LoRA, injected after the sources were listed,
    moved `x.w` to `x.base_layer.w`."""
    out = dict(sources)
    for key in model.state_dict(keep_vars=True):
        plain = key.replace(".base_layer.", ".")
        if key not in out and plain in out:
            out[key] = out.pop(plain)
    return out


def owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """id(parameter) -> every (module, attribute, state-dict key) holding it: tied ones share."""
    out = defaultdict(list)
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                out[id(p)].append((module, pname, f"{mname}.{pname}" if mname else pname))
    return out


def check_sources(model: nn.Module, sources: dict[str, Source]) -> None:
    """Every meta parameter (or its tied twin) must have a source."""
    missing = []
    for group in owners(model).values():
        module, name, _ = group[0]
        if getattr(module, name).is_meta and not any(key in sources for _, _, key in group):
            missing.append(group[0][2])
    if missing:
        raise ValueError(f"no weights for {len(missing)} parameter(s) built on the meta device: "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")


def _read(group: list[tuple[str, Source]], dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """Tensors of one file, memory-mapped; floating ones cast to their parameter's dtype (a bf16
    hub file still gives float32 master weights, as transformers' from_pretrained(dtype=fp32))."""
    out = {}
    with safe_open(group[0][1].file, "pt") as f:
        for key, source in group:
            t = f.get_tensor(source.key)
            out[key] = t.to(dtypes[key]) if t.is_floating_point() else t
    return out


def _by_file(sources: dict[str, Source]) -> dict[str, list[tuple[str, Source]]]:
    files = defaultdict(list)
    for key, source in sources.items():
        files[source.file].append((key, source))
    return files


def load_plain(model: nn.Module, sources: dict[str, Source]) -> None:
    """Turn every meta parameter into its file tensor, in place (one process, no copy); buffers
    with a source (persistent ones of a checkpoint) are copied into."""
    sources = follow_renames(model, sources)
    check_sources(model, sources)
    current = model.state_dict(keep_vars=True)
    values = {}
    for group in _by_file(sources).values():
        values.update(_read(group, {k: current[k].dtype for k, _ in group}))
    for key, value in values.items():
        if tuple(value.shape) != tuple(current[key].shape):
            raise ValueError(f"{key}: the file holds shape {tuple(value.shape)}, the model {tuple(current[key].shape)}")
    for group in owners(model).values():
        module, name, _ = group[0]
        key = next((k for _, _, k in group if k in values), None)
        if key is not None:
            new = nn.Parameter(values.pop(key), requires_grad=getattr(module, name).requires_grad)
            for owner, attr, _ in group:  # tied parameters stay one parameter
                owner._parameters[attr] = new
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in values.items():
            if key in buffers:
                buffers[key].copy_(value)


def plan_chunks(sources: dict[str, Source], chunk_bytes: int = CHUNK_BYTES) -> list[list[tuple[str, Source]]]:
    """Sources in rounds of about `chunk_bytes`, one file per round."""
    rounds = []
    for group in _by_file(sources).values():
        with safe_open(group[0][1].file, "pt") as f:
            sizes = {s.key: f.get_slice(s.key).get_shape() for _, s in group}
        current, size = [], 0
        for key, source in group:
            n = 4 * math.prod(sizes[source.key])  # read as float32
            if current and size + n > chunk_bytes:
                rounds.append(current)
                current, size = [], 0
            current.append((key, source))
            size += n
        if current:
            rounds.append(current)
    return rounds


def load_sharded(model: nn.Module, sources: dict[str, Source], extra: dict[str, torch.Tensor], device,
                 buffers: dict[str, torch.Tensor], chunk_bytes: int = CHUNK_BYTES) -> None:
    """Materialise an FSDP2-sharded meta model on `device` and fill it from rank 0's files.

    `extra`: full tensors of parameters that were built for real on rank 0 (a random-init
    connector, LoRA adapters), broadcast so every rank starts from rank 0's values; `buffers`:
    every buffer, restored after `to_empty`. Every rank calls this (collectives)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    rank0 = dist.get_rank() == 0
    model.to_empty(device=device)
    restore_buffers(model, buffers)  # first: a checkpoint's persistent buffers come with the chunks
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    rounds = plan_chunks(sources, chunk_bytes) if rank0 else []
    count = [len(rounds) + bool(extra) if rank0 else 0]
    dist.broadcast_object_list(count, src=0)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()} if rank0 else {}
    for i in range(count[0]):
        if not rank0:
            chunk = {}
        elif i < len(rounds):
            chunk = _read(rounds[i], dtypes)
        else:
            chunk = {k: v.to(dtypes[k]) if v.is_floating_point() else v for k, v in extra.items()}
        set_model_state_dict(model, chunk, options=options)
        del chunk
