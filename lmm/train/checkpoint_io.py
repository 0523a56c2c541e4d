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
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from lmm import faults
from lmm.files import TMP_MARK, atomic_file, previous_version, replace_dir


class AtomicCheckpointIO(TorchCheckpointIO):
    """A single-file checkpoint (single device, DDP): temp file beside it, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)
            faults.reached("lightning_checkpoint")  # written, not yet renamed into place


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
        faults.reached("lightning_checkpoint")  # every shard written, the folder not yet renamed
        if self.global_rank == 0:
            replace_dir(tmp, path)
        self.barrier("lmm_checkpoint_renamed")


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every N optimizer steps), with two resume faults of Lightning
    2.6 avoided; the kill drills found both (experiments/reliability/).

    - The step it last saved at is not in its state, so a resumed run's first micro-batch saves
      again at the restored step; under gradient accumulation that checkpoint lands mid-window,
      its accumulated gradients lost. Here the restored step counts as saved.
    - A checkpoint saved at the end of an epoch's last batch (on_train_batch_end) restores as
      "restarted mid-epoch on its last batch": the fit loop closes that epoch, but the restart
      stage is still set when the next epoch starts, which then skips its epoch-start hooks and
      counters, and a checkpoint of that epoch's last batch restores as an unfinished epoch that
      runs again. Here the last batch's checkpoint is written at the epoch's end instead (Lightning's
      ordinary end-of-epoch checkpoint), which restores cleanly.
    """

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # saved by on_train_epoch_end, below
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module):
        super().on_train_epoch_end(trainer, pl_module)
        if self._every_n_train_steps >= 1 and self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


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
