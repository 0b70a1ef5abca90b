"""Sliding-window prediction with Gaussian weights, summed in float32."""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


@lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) for p in patch], indexing="ij")
    g = np.ones(patch)
    for ax, p in zip(grids, patch):
        g *= np.exp(-((ax - (p - 1) / 2) ** 2) / (2 * (p * sigma_scale) ** 2))
    g /= g.max()
    return np.maximum(g, 1e-3).astype(np.float32)  # no zero weight at the patch borders


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    return [int(round(s)) for s in np.linspace(0, size - patch, n)]


def windows_per_forward(patch, voxels: int = 2 ** 19, most: int = 8) -> int:
    """How many windows one forward pass takes: several small ones (PyTorch runs a batch of one small
    3D convolution input through its slow reference kernel on the CPU, 8x slower per window than a
    batch of four), one large one (no gain, only memory)."""
    return int(np.clip(voxels // int(np.prod(patch)), 1, most))


def window_starts(shape, patch, step: float = 0.5) -> list[tuple[int, ...]]:
    """Start of every window over a volume of `shape` (padded to at least the patch)."""
    return list(itertools.product(*[tile_starts(max(s, p), p, step) for s, p in zip(shape, patch)]))


@torch.no_grad()
def sliding_window(predict, image: torch.Tensor, patch, step: float = 0.5, pad_values=None,
                   batch: int | None = None) -> torch.Tensor:
    """predict: (B, C, *patch) -> (B, 1, *patch). image: (C, Z, Y, X) on the compute device.

    Pads to at least the patch size (per-channel pad values), accumulates Gaussian-weighted outputs
    and weights in float32, and returns (Z, Y, X) float32. Windows go through `predict` in groups of
    at most `batch` (default: windows_per_forward(patch)), split evenly (9 windows at batch 4: 3, 3,
    3; never a lone last window).
    """
    c, *shape = image.shape
    pads = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pads):
        widths = []
        for p in reversed(pads):
            widths += [p // 2, p - p // 2]
        padded = F.pad(image, widths)
        if pad_values is not None:
            inner = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, shape))
            fill = torch.as_tensor(pad_values, dtype=image.dtype, device=image.device).view(c, 1, 1, 1)
            mask = torch.ones(padded.shape[1:], dtype=torch.bool, device=image.device)
            mask[inner] = False
            padded = torch.where(mask.unsqueeze(0), fill, padded)
        image = padded
    full = image.shape[1:]
    weights = torch.from_numpy(gaussian_weights(tuple(patch))).to(image.device)
    acc = torch.zeros(full, dtype=torch.float32, device=image.device)
    norm = torch.zeros(full, dtype=torch.float32, device=image.device)
    tiles = window_starts(full, patch, step)
    n_groups = -(-len(tiles) // max(1, batch or windows_per_forward(patch)))
    for group in (tiles[k * len(tiles) // n_groups: (k + 1) * len(tiles) // n_groups] for k in range(n_groups)):
        slices = [tuple(slice(s, s + p) for s, p in zip(t, patch)) for t in group]
        out = predict(torch.stack([image[(slice(None), *sl)] for sl in slices])).float()
        for sl, o in zip(slices, out):
            acc[sl] += o[0] * weights
            norm[sl] += weights
    result = acc / norm
    if any(pads):
        result = result[tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, shape))]
    return result
