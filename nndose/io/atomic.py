"""Atomic writes: write to a temporary name beside the target, then rename.

Every temporary (a file being written, a staging folder, a replaced folder on its way out) is hidden
and names its owner, `.<name>.<pid>@<host>.<random>.tmp<suffix>` / `.partial` / `.old` (host: a short
digest of the machine's name), so that a later run on the same machine can tell a leftover of a
killed process from one still in use and remove it (`remove_stale_temporaries`); another machine's
temporaries on a shared file system are left alone.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from nndose.errors import DiskFull, NndoseError


def owner_tag(pid: int | None = None) -> str:
    """The owner part of a temporary's name: pid@host (this process's by default)."""
    return f"{os.getpid() if pid is None else pid}@{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _respect_umask(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600 files and 0700 folders; published outputs get the permissions any
    other program's would (0666 / 0777 less the umask), so colleagues can read an exported model."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


LOW_SPACE_BYTES = 1 << 20


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: the error says so, or the device is (nearly) full
    (torch, blosc2 and friends report a full disk as a generic RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return "No space left" in str(exc) or shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def atomic_write(path: Path | str, writer: Callable[[Path], None], verify: Callable[[Path], None] | None = None) -> None:
    """Call writer(tmp_path), check what it wrote (not empty; `verify(tmp_path)` when given, for writers
    that do not report errors, e.g. SimpleITK on a full disk), then rename tmp_path onto path. On any
    failure the tmp file is removed and `path` is untouched; a full disk is a one-line NndoseError.

    The temporary name keeps the final suffix (e.g. .nii.gz), so format-by-extension writers work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _respect_umask(tmp_path, directory=False)
        writer(tmp_path)
        if tmp_path.stat().st_size == 0:
            raise OSError(errno.EIO, "nothing was written", str(path))
        if verify is not None:
            verify(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, NndoseError) and disk_full(e, path.parent):
            raise DiskFull(f"{path}: no space left on the device ({shutil.disk_usage(path.parent).free // 1024} KiB free); "
                              f"nothing was written: free some space and run again") from None
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_path(new: Path | str, final: Path | str) -> None:
    """Move the file or folder `new` onto `final` (same filesystem). An existing `final` is renamed
    away first and deleted only once `new` is in its place, so no moment loses both."""
    new, final = Path(new), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.replace(new, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=".old", dir=final.parent))
    old.rmdir()
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextmanager
def staging_area(parent: Path | str, label: str = "staging") -> Iterator[Path]:
    """A hidden temporary folder under `parent` (so that moves out of it are renames), removed on exit
    whatever happens; what should survive is moved out of it with `replace_path` before."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{label}.{owner_tag()}.", suffix=".partial", dir=parent))
    try:
        _respect_umask(stage, directory=True)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_directory(final: Path | str, replace: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name and move it to `final` on success.

    On any exception the staging directory is removed and `final` is untouched. With replace=True an
    existing `final` is swapped out only after the new one is complete.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise FileExistsError(final)
    with staging_area(final.parent, final.name) as stage:
        yield stage
        replace_path(stage, final)


_TEMPORARY = re.compile(r"^\..+\.(\d+)@([0-9a-f]{6})\.[A-Za-z0-9_]{8}\.(tmp.*|partial|old)$")


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(folder: Path | str, name: str | None = None) -> list[Path]:
    """Remove the temporaries in `folder` (not below) left by processes that no longer run, only those
    of `name` (e.g. an output folder's staging areas in its parent) when given; returns them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if name is not None and not entry.name.startswith(f".{name}."):
            continue
        m = _TEMPORARY.match(entry.name)
        if not m or f"{m.group(1)}@{m.group(2)}" == owner_tag() or m.group(2) != owner_tag().split("@")[1]:
            continue   # not a temporary, ours, or another machine's
        if process_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
