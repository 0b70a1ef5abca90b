"""Dataset folders from the environment variables nndose_raw, nndose_preprocessed, nndose_results.

Read lazily: importing nndose never fails; a command that needs a path raises an actionable error.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from nndose.errors import NndoseError

ENV_VARIABLES = ("nndose_raw", "nndose_preprocessed", "nndose_results")   # the three folders nndose works in


def _env_path(var: str) -> Path:
    value = os.environ.get(var)
    if not value:
        raise NndoseError(
            f"environment variable {var} is not set; set it to a folder, e.g. `export {var}=$HOME/nndose_data/{var}`"
        )
    return Path(value)


def raw_root() -> Path:
    return _env_path(ENV_VARIABLES[0])


def preprocessed_root() -> Path:
    return _env_path(ENV_VARIABLES[1])


def results_root() -> Path:
    return _env_path(ENV_VARIABLES[2])


def parse_dataset_id(text: str | int) -> int:
    """'1', '001', 'Dataset001_OpenKBP' or 1 -> 1."""
    s = str(text)
    m = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_.*)?", s)
    if not m:
        raise NndoseError(f"dataset id {s!r} is not a number from 0 to 999 or a DatasetXXX_Name folder name")
    return int(m.group(1))


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise NndoseError(f"dataset name {name!r} may hold only letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def find_dataset(root: Path, dataset_id: int) -> Path | None:
    """The DatasetXXX_* folder for this id under root, or None. Two folders with one id is an error."""
    if not root.is_dir():
        return None
    hits = sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if len(hits) > 1:
        raise NndoseError(f"dataset id {dataset_id:03d} is ambiguous under {root}: {', '.join(h.name for h in hits)}")
    return hits[0] if hits else None


def require_dataset(root: Path, dataset_id: int, what: str) -> Path:
    hit = find_dataset(root, dataset_id)
    if hit is None:
        raise NndoseError(f"no {what} dataset {dataset_id:03d} under {root} (expected a folder Dataset{dataset_id:03d}_<Name>)")
    return hit
