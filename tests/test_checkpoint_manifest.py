"""Checkpoints verified against their manifest (lmm/model/checkpoint.py) and written atomically
(lmm/files.py): an incomplete or altered folder is refused with one line naming the file, and a
write that dies part way leaves the previous checkpoint whole."""
import json
import logging
import os

import pytest
import torch

import lmm
from lmm.files import TMP_MARK, atomic_file, clean_leftovers, previous_version, replace_dir, temp_dir_beside
from lmm.model import checkpoint as ckpt
from lmm.model.checkpoint import CheckpointError, load_weights, verify


@pytest.fixture
def saved(tiny_lmm, tmp_path):
    return tiny_lmm.save_pretrained(tmp_path / "ckpt")


def test_manifest_lists_every_file_with_its_size_and_sha256(saved):
    import hashlib

    files = json.loads((saved / "manifest.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(files) == on_disk and "model.safetensors" in files and any(f.startswith("tokenizer/") for f in files)
    for name, entry in files.items():
        data = (saved / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    verify(saved)


def test_truncated_weights_are_refused_naming_the_file(saved, tiny_lmm):
    weights = saved / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    for read in (lambda: lmm.load(saved), lambda: load_weights(tiny_lmm, saved)):
        with pytest.raises(CheckpointError) as err:
            read()
        assert str(weights) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)


def test_a_changed_byte_is_found_by_its_hash(saved, tiny_lmm):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 differs"):
        lmm.load(saved)
    lmm.load(saved, verify_hashes=False)  # sizes only, by choice
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_weights(tiny_lmm, saved)


def test_a_folder_without_its_manifest_is_not_finished(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing"):
        lmm.load(saved)
    assert ckpt.is_finished(saved)[0] is False
    assert ckpt.is_finished(saved.parent / "absent")[0] is False


def test_a_missing_tokenizer_file_is_named(saved):
    (saved / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer/tokenizer\.json: missing"):
        lmm.load(saved)


def test_version_1_checkpoints_load_unverified_with_a_warning(saved, caplog):
    (saved / "manifest.json").unlink()
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "version": 1}))
    with caplog.at_level(logging.WARNING):
        lmm.load(saved)
    assert "not verified" in caplog.text


def test_a_write_that_fails_part_way_leaves_the_old_checkpoint_whole(saved, tiny_lmm, monkeypatch):
    before = (saved / "model.safetensors").read_bytes()

    def dies(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk went away")

    monkeypatch.setattr(ckpt, "save_file", dies)
    with torch.no_grad():
        next(tiny_lmm.parameters()).add_(1)
    with pytest.raises(OSError, match="disk went away"):
        tiny_lmm.save_pretrained(saved)
    assert (saved / "model.safetensors").read_bytes() == before
    verify(saved)
    assert not [p for p in saved.parent.iterdir() if TMP_MARK in p.name]


def test_leftovers_of_a_killed_write_are_cleaned_and_a_set_aside_folder_found(tmp_path):
    tmp = temp_dir_beside(tmp_path / "last.ckpt")
    (tmp / "shard").write_text("half")
    assert clean_leftovers(tmp_path) == [tmp] and not tmp.exists()
    # a kill between replace_dir's two renames leaves the previous folder set aside
    target = tmp_path / "last.ckpt"
    target.mkdir()
    (target / "x").write_text("1")
    aside = target.with_name(f".last.ckpt.old-{os.getpid()}")
    os.replace(target, aside)
    assert previous_version(target) == aside
    new = temp_dir_beside(target)
    (new / "x").write_text("2")
    replace_dir(new, target)
    assert (target / "x").read_text() == "2"


def test_atomic_file_keeps_the_old_content_when_the_block_fails(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path, "w") as f:
        f.write("new, half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_hashes_are_checked_once_until_a_file_changes(saved, monkeypatch):
    calls = []
    real = ckpt.sha256
    monkeypatch.setattr(ckpt, "sha256", lambda p, *a: (calls.append(p.name), real(p, *a))[1])
    verify(saved)
    first = len(calls)
    assert first == len(json.loads((saved / "manifest.json").read_text())["files"]) and (saved / ".verified").is_file()
    verify(saved)
    lmm.load(saved)
    assert len(calls) == first  # same size, mtime and inode: not hashed again
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(CheckpointError, match="sha256 differs"):
        verify(saved)
    assert ".verified" not in json.loads((saved / "manifest.json").read_text())["files"]
