"""Lightning checkpoints (`last.ckpt`) written atomically.

What Lightning 2.6 does: `TorchCheckpointIO` serialises to memory and writes through an fsspec
transaction, whose local file is staged by `tempfile.mkstemp()` in the system temp folder and moved
on commit: a rename when /tmp shares the run's file system, a copy (partial if killed) when it does
not, and no fsync either way. `ModelParallelStrategy` (FSDP2) bypasses CheckpointIO and writes its
distributed checkpoint straight into the `last.ckpt` folder, so a kill mid-save leaves a folder that
looks like a checkpoint and fails to load. Both are replaced here by write-beside, fsync, rename.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from lmm.files import TMP_MARK, atomic_file, previous_version, replace_dir


class AtomicCheckpointIO(TorchCheckpointIO):
    """A single-file checkpoint (single device, DDP): temp file beside it, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's FSDP2 strategy, with its distributed checkpoint folder written beside the final
    name by every rank, synced, and renamed into place by rank 0."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:  # one file from rank 0 through CheckpointIO
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}{TMP_MARK}save")  # one name every rank agrees on
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("lmm_checkpoint_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("lmm_checkpoint_written")
        if self.global_rank == 0:
            replace_dir(tmp, path)
        self.barrier("lmm_checkpoint_renamed")


def resumable(last: Path, rank: int = 0) -> Path | None:
    """The Lightning checkpoint to resume from: `last`, or the copy a kill left set aside between
    the two renames of `replace_dir` (rank 0 restores it to its name before the ranks load it)."""
    if last.exists():
        return last
    old = previous_version(last)
    if old is None:
        return None
    if rank == 0:
        old.rename(last)
    return last
