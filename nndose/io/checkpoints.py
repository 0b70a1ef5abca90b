"""Atomic checkpoints that load with torch.load(weights_only=True): tensors and plain values only,
so a crafted file can never run code. A checkpoint is a dict holding at least 'network' (the
state dict) and 'channels' (the input channels it was trained with)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise NndoseError(f"{path}: checkpoint not found (train this fold first, or name another with -chk)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch warns about legacy formats before it refuses them
            ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # a truncated, foreign or unsafe file
        raise NndoseError(f"{path}: cannot load checkpoint (truncated, or not an nndose checkpoint); if a training "
                          f"run was cut short, continue it with --c or use checkpoint_best.pth (-chk)") from None
    network = ck.get("network") if isinstance(ck, dict) else None
    if (not isinstance(network, dict) or not network
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in network.items())
            or not isinstance(ck.get("channels"), (list, tuple))):
        raise NndoseError(f"{path}: not an nndose checkpoint (needs 'network' weights and 'channels')")
    return ck
