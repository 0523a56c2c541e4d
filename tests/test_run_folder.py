"""The run folder: one run at a time (a lock), room and write access checked before training (a
probe), Lightning checkpoints written atomically, and an unfinished export redone on resume."""
import errno
import logging
import os

import filelock
import pytest
import torch
from safetensors.torch import load_file

from lmm.train import checkpoint_io, preflight
from lmm.train.checkpoint_io import AtomicCheckpointIO
from lmm.train.preflight import RunFolderBusy, RunFolderUnwritable
from lmm.train.run import train
from tests.test_train import compose_train

CELL = "easyvqa/tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0/base"
COMMON = ["recipe=base", "evaluate=false", "callbacks.samples.num_samples=0"]


def test_resume_redoes_an_export_that_did_not_finish(data_dir, tmp_path, caplog):
    run = tmp_path / CELL
    train(compose_train(data_dir, tmp_path, *COMMON))
    export = run / "sft/checkpoint"
    finished = {k: v.clone() for k, v in load_file(export / "model.safetensors").items()}  # not the mapped file
    weights = export / "model.safetensors"
    with open(weights, "r+b") as f:  # what a kill during a non-atomic write would have left
        f.truncate(weights.stat().st_size // 3)
    with caplog.at_level(logging.WARNING):
        out = train(compose_train(data_dir, tmp_path, *COMMON, "resume=true"))
    assert "stage sft: its checkpoint is not finished" in caplog.text and "model.safetensors" in caplog.text
    assert "stage pretrain" not in caplog.text.split("stage sft")[0]  # pretrain's verified export is kept
    redone = load_file(export / "model.safetensors")
    assert redone.keys() == finished.keys() and all(torch.equal(redone[k], finished[k]) for k in finished)
    assert out["checkpoint"] == str(export) and not (run / "pretrain/version_1").exists()


def test_a_second_run_on_the_same_folder_is_refused(data_dir, tmp_path):
    run = tmp_path / CELL
    run.mkdir(parents=True)
    held = filelock.FileLock(str(run / ".lock"))
    with held, pytest.raises(RunFolderBusy, match=f"{run} is in use by another run"):
        train(compose_train(data_dir, tmp_path, *COMMON))
    assert not (run / "pretrain").exists()


def test_a_full_disk_stops_the_run_before_training(data_dir, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(preflight.os, "posix_fallocate", full)
    with pytest.raises(RunFolderUnwritable, match=r"GB free, but stage 'pretrain' writes about [0-9.]+ GB"):
        train(compose_train(data_dir, tmp_path, *COMMON))
    assert not (tmp_path / CELL / "pretrain/lightning").exists()


def test_an_unwritable_run_folder_is_one_clear_error(data_dir, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunFolderUnwritable, match="cannot be created"):
        train(compose_train(data_dir, tmp_path, *COMMON, f"paths.output_dir={tmp_path / 'a_file' / 'run'}"))


def test_probe_reserves_the_stage_size(tmp_path, monkeypatch):
    sizes = []
    real = os.posix_fallocate
    monkeypatch.setattr(preflight.os, "posix_fallocate", lambda fd, o, n: (sizes.append(n), real(fd, o, n)))
    preflight.probe_write(tmp_path, 5_000_000, "stage 'x'")
    assert sizes == [5_000_000] and list(tmp_path.iterdir()) == []
    model = torch.nn.Linear(10, 10)
    model.bias.requires_grad_(False)
    assert preflight.stage_write_bytes(model) == 2 * 110 * 4 + 2 * 4 * 100


def test_lightning_checkpoint_write_that_dies_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "lightning" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    assert torch.load(path)["step"] == 1

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1 and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
