"""Atomic writes: a file or folder appears at its final name complete or not at all.

Each write goes to a temporary name in the same directory (a rename is atomic only within one file
system; Lightning's own fsspec transaction stages in /tmp and *copies* across devices), is fsynced,
then renamed into place, and the directory is fsynced so the rename itself survives a power loss.
A kill leaves at worst a `.<name>.tmp-*` leftover, which `clean_leftovers` removes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; the data files are synced
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file under `path`, then every directory, deepest first."""
    path = Path(path)
    dirs = []
    for root, _, names in os.walk(path):
        dirs.append(root)
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        fsync_dir(d)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """`with atomic_file(p, "w") as f: f.write(...)`: written to a temporary file beside `p`, synced,
    renamed to `p` only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def temp_dir_beside(path: str | Path) -> Path:
    """An empty folder next to `path`, to be filled and then moved there by `replace_dir`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))


def replace_dir(tmp: str | Path, path: str | Path) -> Path:
    """Sync the filled folder `tmp` and rename it to `path`. An earlier `path` is first renamed aside
    (`.<name>.old-*`) and deleted after: a kill in between leaves that folder, which
    `previous_version` finds, so the old content is never lost before the new one is in place."""
    tmp, path = Path(tmp), Path(path)
    fsync_tree(tmp)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return path


def previous_version(path: str | Path) -> Path | None:
    """The folder `replace_dir` set aside for `path` when a kill came between its two renames."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return olds[-1] if olds else None


def clean_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders a killed write left directly in `folder`."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and TMP_MARK in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed
