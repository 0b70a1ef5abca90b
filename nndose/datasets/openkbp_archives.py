"""Unpacking patients from the OpenKBP .tar.xz archives (members <split>/<pt_N>/<file>.csv)."""
from __future__ import annotations

import tarfile
from pathlib import Path

from nndose.errors import NndoseError


def extract_patients(archive: Path, dest: Path, n: int | None = None) -> list[Path]:
    """Unpack the first n patients (all with n=None) of an archive into dest/<pt_N>/; returns their folders."""
    archive = Path(archive)
    if not archive.is_file():
        raise NndoseError(f"{archive}: OpenKBP archive not found")
    patients: list[str] = []
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) < 3 or ".." in parts or not parts[1].startswith("pt_"):
                continue
            if parts[1] not in patients:
                if n is not None and len(patients) == n:
                    break
                patients.append(parts[1])
            if member.isfile():
                target = Path(dest) / parts[1] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return [Path(dest) / p for p in patients]
