"""One training process per fold folder, by an advisory lock (flock) on a file in the folder.

The operating system releases the lock when its process ends, however it ends (a kill, a crash, a
lost machine's process on a shared file system that supports locks), so a lock is never stale. The
file names the holder (host and pid) for the message a second process gets; it stays in the folder,
unless the folder holds nothing else when the run ends (a run that failed before writing anything).
"""
from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nndose.errors import NndoseError
from nndose.io.layout import LOCK_FILE


@contextmanager
def fold_lock(fold_dir: Path, enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    lock = fold_dir / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split() or ["another", "process"]
            raise NndoseError(f"{fold_dir} is being trained by process {holder[-1]} on {holder[0]}; wait for it to "
                              f"finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if [p.name for p in fold_dir.iterdir()] == [LOCK_FILE]:
                lock.unlink()
    finally:
        os.close(fd)   # releases the lock
