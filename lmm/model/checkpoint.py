"""Self-describing checkpoints: config.json (component specs) + model.safetensors + tokenizer/ +
manifest.json (every file's size and sha256, written last).

`load` rebuilds the architecture from the specs alone (no download, no pickle, no remote code:
specs may only name classes inside `lmm`) and then loads the weights strictly. Whoever reads a
checkpoint (`load`, a stage's `init`, `resume`) verifies it against its manifest first: a folder
without one, or whose files differ from it, was not finished and is refused, naming the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmm import faults
from lmm.files import replace_dir, temp_dir_beside, write_text

log = logging.getLogger(__name__)

CONFIG, WEIGHTS, TOKENIZER, MANIFEST = "config.json", "model.safetensors", "tokenizer", "manifest.json"
STAMP = ".verified"  # the files' stat when their hashes last matched: later reads skip the hashing
FORMAT = "lmm-checkpoint"
VERSION = 2  # 2: manifest.json; version 1 folders (no manifest) load with a warning, unverified


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete or differs from its manifest; the message names the file."""


def save_pretrained(model, path) -> Path:
    return write_checkpoint(path, model.spec(), model.state_dict(), model.tokenizer)


def write_checkpoint(path, spec: dict, state: dict[str, torch.Tensor], tokenizer) -> Path:
    """config.json + model.safetensors + tokenizer/ + manifest.json (last), written into a temporary
    folder beside `path`, fsynced and renamed into place: a kill leaves the old checkpoint or the
    new one, never half of one, and a model memory-mapped from the old file (lmm.load) keeps its pages."""
    path = Path(path)
    tmp = temp_dir_beside(path)
    try:
        config = {"format": FORMAT, "version": VERSION, **spec}
        config["llm"] = {**config["llm"], "tokenizer": TOKENIZER}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        save_file(_unshared(state), str(tmp / WEIGHTS), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp / TOKENIZER)
        faults.reached("export")  # weights written, manifest not yet
        write_manifest(tmp)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def sha256(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):  # hashlib releases the GIL on large blocks: runs beside a load
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, STAMP))


def write_manifest(folder) -> Path:
    folder = Path(folder)
    files = {name: {"size": (folder / name).stat().st_size, "sha256": sha256(folder / name)} for name in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": "lmm-manifest", "files": files}, indent=1))
    return folder / MANIFEST


def verify(path, hashes: bool = True) -> None:
    """Raise CheckpointError (one line, naming the file) unless `path` is a finished checkpoint: its
    manifest present, every file it lists present with the listed size (and sha256 when `hashes`),
    and no weights file it does not list. Version 1 folders (before manifests) pass with a warning."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        if (path / CONFIG).is_file() and _version(path) == 1:
            log.warning("%s has no %s (written before lmm checkpoint version 2): not verified", path, MANIFEST)
            return
        raise CheckpointError(f"{manifest}: missing; {path} is not a finished lmm checkpoint (interrupted write?)")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest}: unreadable ({type(e).__name__}: {e})") from None
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in {manifest})")
        if file.stat().st_size != entry["size"]:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {entry['size']} in {manifest} (truncated or replaced)")
    if WEIGHTS not in files:
        raise CheckpointError(f"{path / WEIGHTS}: not listed in {manifest}")
    if not hashes:
        return
    stat = _stat(path, files)
    if _stamp(path) == stat:  # hashed before, and no file has changed since (size, mtime, inode)
        return
    for name, entry in files.items():
        if sha256(path / name) != entry["sha256"]:
            raise CheckpointError(f"{path / name}: sha256 differs from {manifest} (corrupted or replaced)")
    try:
        write_text(path / STAMP, json.dumps(stat))
    except OSError:  # a read-only checkpoint is verified again on its next read
        pass


def _stat(path: Path, files: dict) -> dict:
    manifest = (path / MANIFEST).stat()
    stat = {name: [s.st_size, s.st_mtime_ns, s.st_ino] for name in files for s in [(path / name).stat()]}
    return {"manifest": [manifest.st_size, manifest.st_mtime_ns, manifest.st_ino], "files": stat}


def _stamp(path: Path) -> dict | None:
    try:
        return json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return None


def weights_sha256(path) -> str | None:
    """The weights' sha256 from the manifest (None for a version 1 folder): who the answers are of."""
    manifest = Path(path) / MANIFEST
    return json.loads(manifest.read_text())["files"][WEIGHTS]["sha256"] if manifest.is_file() else None


def verify_in_background(path) -> Future:
    """verify(path) in a thread: the hashing overlaps the load that reads the same pages."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmm-verify")
    future = pool.submit(verify, path)
    pool.shutdown(wait=False)
    return future


def is_finished(path) -> tuple[bool, str]:
    """(True, "") for a verified checkpoint, else (False, why): for resume, which redoes the work."""
    try:
        verify(path)
    except CheckpointError as e:
        return False, str(e)
    return True, ""


def _version(path: Path) -> int:
    try:
        return int(json.loads((path / CONFIG).read_text()).get("version", 1))
    except (ValueError, OSError):
        return 0


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
    try:
        config = json.loads((path / CONFIG).read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / CONFIG}: not valid JSON ({e})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FORMAT:
        raise ValueError(f"{path / CONFIG} is not an lmm checkpoint config (format={found!r})")
    if config.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer lmm (checkpoint version {config['version']} > {VERSION})")
    return config


def check_tokenizer(path, tokenizer, what: str) -> None:
    """The checkpoint's tokenizer must map every token to the same id as `tokenizer`: same-size
    vocabularies of other tokenizers load without a shape error and train on garbage."""
    from transformers import AutoTokenizer

    path = Path(path)
    theirs = AutoTokenizer.from_pretrained(str(path / TOKENIZER)).get_vocab()
    ours = tokenizer.get_vocab()
    if theirs != ours:
        moved = sum(1 for token, i in ours.items() if theirs.get(token) != i) + len(theirs.keys() - ours.keys())
        raise ValueError(f"{what}: the tokenizer of {path} does not match this run's ({len(theirs)} vs {len(ours)} "
                         f"tokens, {moved} with another id); use the checkpoint's tokenizer, {path / TOKENIZER}")


def load_weights(model, path, modules: list[str] | None = None) -> None:
    """Load a checkpoint's weights into `model`, all of them or only `modules` (e.g. ["connector"]).

    Strict over what is loaded: every selected checkpoint tensor must fit a model tensor and every
    selected model tensor must be given. A model with LoRA adapters injected (keys `x.base_layer.w`
    plus `lora_*`) loads a plain checkpoint: the adapters keep their fresh initialisation.
    """
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {path}: not an lmm checkpoint (made by LMM.save_pretrained)")
    verify(path)
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


def load(path, device: str | torch.device | None = None, dtype: torch.dtype | None = None, verify_hashes: bool = True):
    """`lmm.load(path)`: an LMM in eval mode, ready for `.chat(image, text)`. The folder is checked
    against its manifest: sizes first, sha256 in a thread beside the load (`verify_hashes=False`
    skips the hashes)."""
    from lmm.model.lazy import load_on_meta

    path = Path(path)
    config = read_config(path)
    verify(path, hashes=False)  # an incomplete folder fails here, before anything is built
    hashed = verify_in_background(path) if verify_hashes and _version(path) > 1 else None
    config["llm"]["tokenizer"] = str(path / config["llm"]["tokenizer"])
    # Built on the meta device and given the file's tensors (memory-mapped): no random init, no copy.
    model = load_on_meta({k: config[k] for k in ("vision", "connector", "llm")}, path)
    if hashed is not None:
        hashed.result()  # raises the CheckpointError, if any
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()
