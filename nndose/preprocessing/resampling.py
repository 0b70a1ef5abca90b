"""Resampling between grids that share a direction (crop and spacing changes only)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from nndose.io.volumes import Grid


def grid_with_spacing(grid: Grid, spacing_zyx) -> Grid:
    """A grid covering the same physical box as `grid`, with the given spacing (voxel centres re-placed)."""
    old = grid.spacing_zyx
    new = np.asarray(spacing_zyx, dtype=float)
    shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(grid.shape_zyx, old, new))
    shift_idx = (new - old) / 2.0 / old  # first new centre, in old index units
    origin = grid.index_to_physical(shift_idx)
    return Grid(shape, tuple(new[::-1].tolist()), tuple(float(v) for v in origin), grid.direction)


def resample_to_grid(array: np.ndarray, src: Grid, dst: Grid, order: int = 1, cval: float | None = None) -> np.ndarray:
    """Interpolate `array` (on src) at the voxel centres of dst; outside src: cval, or the nearest value."""
    if not np.allclose(src.direction, dst.direction, atol=1e-5):
        raise ValueError("resample_to_grid needs grids with the same direction")
    scale = dst.spacing_zyx / src.spacing_zyx
    offset = src.physical_to_index(np.asarray(dst.origin_xyz))
    mode = "nearest" if cval is None else "constant"
    out = ndimage.affine_transform(np.asarray(array, dtype=np.float32), scale, offset=offset,
                                   output_shape=dst.shape_zyx, order=order, mode=mode, cval=cval or 0.0)
    return out.astype(np.float32, copy=False)


def resample_mask(mask: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """Linear interpolation of the mask's occupancy, threshold 0.5. A small structure that would vanish
    keeps the voxels holding at least half its largest occupancy, so no contoured organ disappears."""
    occ = resample_to_grid(mask.astype(np.float32), src, dst, order=1, cval=0.0)
    out = occ >= 0.5
    if not out.any() and mask.any() and occ.max() > 0:
        out = occ >= 0.5 * occ.max()
    return out


def crop_grid(grid: Grid, start_zyx, stop_zyx) -> Grid:
    start = np.asarray(start_zyx, dtype=float)
    shape = tuple(int(b - a) for a, b in zip(start_zyx, stop_zyx))
    return Grid(shape, grid.spacing_xyz, tuple(float(v) for v in grid.index_to_physical(start)), grid.direction)


def bbox_with_margin(mask: np.ndarray, grid: Grid, margin_mm: float) -> tuple[list[int], list[int]]:
    """Index bounding box of a mask grown by margin_mm, clipped to the volume."""
    idx = np.argwhere(mask)
    pad = [int(math.ceil(margin_mm / s)) for s in grid.spacing_zyx]
    lo = [max(0, int(v) - p) for v, p in zip(idx.min(0), pad)]
    hi = [min(n, int(v) + 1 + p) for v, p, n in zip(idx.max(0), pad, grid.shape_zyx)]
    return lo, hi
