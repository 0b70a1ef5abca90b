"""One training process per fold folder: a lock file holding the owner's host and pid.

A lock whose process is gone (killed, machine restarted) is stale and taken over; a live one refuses
the second process with a one-line error naming the first.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nndose.errors import NndoseError
from nndose.io.atomic import process_alive

LOCK_FILE = ".training.lock"


def _owner(lock: Path) -> tuple[str, int] | None:
    try:
        host, pid = lock.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


@contextmanager
def fold_lock(fold_dir: Path, enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    lock = fold_dir / LOCK_FILE
    me = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = _owner(lock)
            if owner and (owner[0] != socket.gethostname() or process_alive(owner[1])):
                raise NndoseError(f"{fold_dir} is being trained by process {owner[1]} on {owner[0]}; wait for it "
                                  f"to finish (or delete {lock} if that process is gone)") from None
            lock.unlink(missing_ok=True)   # stale: its process is gone
    else:
        raise NndoseError(f"{lock}: cannot take the training lock")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(me)
        yield
    finally:
        if _owner(lock) == (socket.gethostname(), os.getpid()):
            lock.unlink(missing_ok=True)
