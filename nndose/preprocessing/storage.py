"""Preprocessed cases on disk: compressed, chunked, memory-mappable blosc2 arrays plus a small JSON.

<case>.b2nd holds the input channels (C, Z, Y, X) float32, <case>_dose.b2nd the training target
(1, Z, Y, X) float32 (dose / reference dose), <case>.json the case's properties. Writes are atomic.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import blosc2
import numpy as np

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_json

_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.SHUFFLE]}


def _chunks(shape) -> tuple[int, ...]:
    return (1,) + tuple(min(n, 32) for n in shape[1:])


def save_array(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".b2nd", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        blosc2.asarray(np.ascontiguousarray(array), urlpath=tmp, mode="w", chunks=_chunks(array.shape), cparams=_CPARAMS)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_array(path: Path):
    """Memory-mapped, lazily decompressed array; slicing returns numpy."""
    if not Path(path).is_file():
        raise NndoseError(f"{path}: preprocessed array not found (run nndose_plan_and_preprocess)")
    return blosc2.open(str(path), mode="r", mmap_mode="r")


def save_case(folder: Path, name: str, data: np.ndarray, dose: np.ndarray | None, properties: dict) -> None:
    save_array(folder / f"{name}.b2nd", data.astype(np.float32))
    if dose is not None:
        save_array(folder / f"{name}_dose.b2nd", dose.astype(np.float32)[None])
    atomic_write_json(folder / f"{name}.json", properties)


def load_case(folder: Path, name: str, mmap: bool = True) -> tuple[object, object | None, dict]:
    """(data, dose or None, properties); with mmap=False the arrays are read into numpy."""
    folder = Path(folder)
    props_path = folder / f"{name}.json"
    if not props_path.is_file():
        raise NndoseError(f"{props_path}: case properties not found")
    props = json.loads(props_path.read_text())
    data = open_array(folder / f"{name}.b2nd")
    dose_path = folder / f"{name}_dose.b2nd"
    dose = open_array(dose_path) if dose_path.is_file() else None
    if not mmap:
        data = data[:]
        dose = dose[:] if dose is not None else None
    return data, dose, props


def list_preprocessed_cases(folder: Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.json") if not p.name.startswith("."))
