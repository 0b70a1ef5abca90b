"""Preprocessed cases on disk: compressed, chunked, memory-mappable blosc2 arrays plus a small JSON.

<case>.b2nd holds the input channels (C, Z, Y, X) float32, <case>_dose.b2nd the training target
(1, Z, Y, X) float32 (dose / reference dose), <case>.json the case's properties, plans_stamp.txt the
digest of the plan settings the arrays were made with. Writes are atomic.
"""
from __future__ import annotations

from pathlib import Path

import blosc2
import numpy as np

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write, atomic_write_json
from nndose.io.json_file import read_json

_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.SHUFFLE]}
ARRAY_SUFFIX = ".b2nd"
STAMP_FILE = "plans_stamp.txt"   # the digest of the plan settings the folder's arrays were made with


def _chunks(shape) -> tuple[int, ...]:
    return (1,) + tuple(min(n, 32) for n in shape[1:])


def array_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}{ARRAY_SUFFIX}"


def save_array(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    atomic_write(path, lambda p: blosc2.asarray(array, urlpath=str(p), mode="w", chunks=_chunks(array.shape),
                                                cparams=_CPARAMS))


def open_array(path: Path):
    """Memory-mapped, lazily decompressed array; slicing returns numpy."""
    if not Path(path).is_file():
        raise NndoseError(f"{path}: preprocessed array not found (run nndose_plan_and_preprocess)")
    try:
        return blosc2.open(str(path), mode="r", mmap_mode="r")
    except Exception as e:  # a truncated or foreign file
        raise NndoseError(f"{path}: cannot read preprocessed array ({type(e).__name__}); "
                          f"run nndose_plan_and_preprocess again") from None


def save_case(folder: Path, name: str, data: np.ndarray, dose: np.ndarray | None, properties: dict) -> None:
    save_array(array_path(folder, name), data.astype(np.float32))
    if dose is not None:
        save_array(array_path(folder, f"{name}_dose"), dose.astype(np.float32)[None])
    atomic_write_json(Path(folder) / f"{name}.json", properties)


def load_properties(folder: Path, name: str) -> dict:
    props = read_json(Path(folder) / f"{name}.json", "run nndose_plan_and_preprocess")
    if not isinstance(props, dict):
        raise NndoseError(f"{Path(folder) / name}.json: case properties must be a JSON object")
    return props


def load_case(folder: Path, name: str, mmap: bool = True) -> tuple[object, object | None, dict]:
    """(data, dose or None, properties); with mmap=False the arrays are read into numpy."""
    props = load_properties(folder, name)
    data = open_array(array_path(folder, name))
    dose_path = array_path(folder, f"{name}_dose")
    dose = open_array(dose_path) if dose_path.is_file() else None
    if not mmap:
        data = data[:]
        dose = dose[:] if dose is not None else None
    return data, dose, props


def list_preprocessed_cases(folder: Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.json") if not p.name.startswith("."))
