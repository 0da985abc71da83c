"""Atomic output: a temporary folder beside the target, fsync'd and renamed onto it; stale temporary
folders of killed runs are removed; with --force the old target is swapped out atomically."""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from vidport.porting.streaming import _libc

from vidport.errors import ConvertError

TMP_TAG = ".vidport-tmp-"
OLD_TAG = ".vidport-old-"


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder, of a finished tree, once before it is published (not each
    shard as it closes, which would stop the copy until the disk has written the shard back)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name))
    for dirpath, _, _ in os.walk(root):
        _fsync_path(dirpath)


class Flusher(threading.Thread):
    """fsyncs each finished shard on its own thread while the next ones stream, so the disk writes the
    output back from the start instead of when the kernel's dirty-page threshold is reached (10% of RAM
    by default: 12 GB on a 128 GB machine) or at the final fsync. Best effort: ``publish`` fsyncs the
    whole tree again (cheap for files already on disk) and that is where an error is reported."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()

    def add(self, path: Path) -> None:
        self._queue.put(path)

    def finish(self) -> None:
        self._queue.put(None)
        if self.ident is not None:
            self.join()

    def run(self) -> None:
        while (path := self._queue.get()) is not None:
            try:
                _fsync_path(path)
            except OSError:
                pass


def _fsync_path(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Atomic output folder
# ----------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path, log: Callable[[str], None]) -> None:
    """Temporary folders left by killed runs for this target (their process is gone) are removed."""
    parent = out.parent
    if not parent.is_dir():
        return
    for tag in (TMP_TAG, OLD_TAG):
        prefix = f".{out.name}{tag}"
        for p in parent.iterdir():
            if not p.name.startswith(prefix):
                continue
            try:
                pid = int(p.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                log(f"removing {p} left by an interrupted run (pid {pid})")
                shutil.rmtree(p, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    try:
        fn = _libc().renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def publish(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished temporary folder onto the target; with force, the old target goes only after."""
    fsync_tree(tmp)
    if out.exists() or out.is_symlink():
        if not force:
            raise ConvertError(f"{out} already exists; pass --force to replace it")
        if _exchange(tmp, out):
            old = tmp  # after the swap the old repo sits at the temporary path
        else:
            old = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
        _fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    _fsync_path(out.parent)


def disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


