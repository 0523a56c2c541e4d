"""Checks before a stage trains, so that a run fails in its first seconds and not hours later:
the run folder is ours alone (a lock) and can hold what the stage will write (a probe write)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

import filelock
from torch import nn

LOCK_NAME = ".lock"
GB = 1e9


class RunFolderBusy(RuntimeError):
    pass


class RunFolderUnwritable(OSError):
    pass


@contextlib.contextmanager
def run_folder_lock(run_dir: Path):
    """Held for the whole run by its rank-0 process (the other ranks of the job do not take it): a
    second run started on the same folder stops at once instead of interleaving its checkpoints.
    An OS lock (flock): a killed run's lock is gone with its process, so `resume=true` can retake it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderUnwritable(e.errno, f"run folder {run_dir} cannot be created ({e.strerror}); "
                                           f"set paths.output_dir to a folder you can write") from None
    lock = filelock.FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunFolderBusy(f"{run_dir} is in use by another run (lock {run_dir / LOCK_NAME} is held); wait for it "
                            f"to end, or give this run another folder (run.tag=_<name>)") from None
    try:
        yield
    finally:
        lock.release()


def stage_write_bytes(model: nn.Module) -> int:
    """What a stage writes: the exported weights, plus the Lightning checkpoint (the weights again
    and AdamW's two float32 moments per trained parameter). Shapes only: works on meta tensors."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict(keep_vars=True).values())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2 * weights + 2 * 4 * trained


def probe_write(folder: Path, nbytes: int, what: str) -> None:
    """Reserve `nbytes` in `folder` (posix_fallocate: real blocks, no data written) and free them;
    an unwritable folder or a full disk stops the run here, with the figures."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".space-probe", dir=folder)
    except OSError as e:
        raise RunFolderUnwritable(e.errno, f"run folder {folder} is not writable ({e.strerror}); "
                                           f"set paths.output_dir to a folder you can write") from None
    try:
        _reserve(fd, folder, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(folder).free
            raise RunFolderUnwritable(e.errno, f"run folder {folder} has {free / GB:.2f} GB free, but {what} writes "
                                               f"about {nbytes / GB:.2f} GB; free space or set paths.output_dir") from None
        raise RunFolderUnwritable(e.errno, f"run folder {folder}: probe write failed ({e.strerror})") from None
    finally:
        os.close(fd)
        os.unlink(tmp)


def _reserve(fd: int, folder: Path, nbytes: int) -> None:
    try:
        os.posix_fallocate(fd, 0, max(nbytes, 1))
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # A file system without fallocate (some network mounts): compare with the free space instead.
        if shutil.disk_usage(folder).free < nbytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
