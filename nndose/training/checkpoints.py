"""Atomic checkpoints that load with torch.load(weights_only=True)."""
from __future__ import annotations

from pathlib import Path

import torch

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise NndoseError(f"{path}: checkpoint not found (train this fold first, or pick another with -chk)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise NndoseError(f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
