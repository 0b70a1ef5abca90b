"""The compute device from a command's --device choice."""
from __future__ import annotations

import torch

from nndose.errors import NndoseError

DEVICE_CHOICES = ("cpu", "cuda", "mps", "auto")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NndoseError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NndoseError("--device mps: MPS is not available")
    if name not in DEVICE_CHOICES:
        raise NndoseError(f"--device {name!r}: choose from {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)
