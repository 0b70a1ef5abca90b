"""A CT series -> HU volume (z, y, x) and its Grid, with the checks a series needs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from nndose.errors import NndoseError
from nndose.io.volumes import Grid


def slice_normal(orientation) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def grid_from_geometry(origin, orientation, pixel_spacing_rc, slice_step: float, shape_zyx) -> Grid:
    """DICOM geometry (ImagePositionPatient of the first plane, ImageOrientationPatient, PixelSpacing
    [row, column], distance between planes along the normal) -> Grid."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    direction = np.stack([row, col, normal], axis=1)   # columns: x, y, z index axes
    return Grid(tuple(int(s) for s in shape_zyx),
                (float(pixel_spacing_rc[1]), float(pixel_spacing_rc[0]), float(slice_step)),
                tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))


def read_ct_series(paths: list[Path]) -> tuple[np.ndarray, Grid, pydicom.Dataset]:
    """HU volume (float32), grid, and the first slice's header (patient and study identity)."""
    if not paths:
        raise NndoseError("no CT slices")
    slices = [pydicom.dcmread(p) for p in paths]
    series = {str(s.SeriesInstanceUID) for s in slices}
    if len(series) > 1:
        raise NndoseError(f"{len(series)} CT series in one study; keep one per patient folder")
    first = slices[0]
    orientation = [float(v) for v in first.ImageOrientationPatient]
    for s in slices:
        if not np.allclose([float(v) for v in s.ImageOrientationPatient], orientation, atol=1e-4):
            raise NndoseError(f"CT slice {s.get('InstanceNumber', '?')}: orientation differs from the series")
        if (s.Rows, s.Columns) != (first.Rows, first.Columns):
            raise NndoseError("CT slices differ in size")
    normal = slice_normal(orientation)
    slices.sort(key=lambda s: float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])))
    positions = np.array([np.dot(normal, [float(v) for v in s.ImagePositionPatient]) for s in slices])
    if len(slices) < 2:
        raise NndoseError("CT series has a single slice")
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        raise NndoseError("CT series holds two slices at the same position")
    step = float(np.median(gaps))
    if np.max(np.abs(gaps - step)) > max(0.01, 0.01 * step):
        raise NndoseError(f"CT slices unevenly spaced (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm): a slice is missing?")
    volume = np.empty((len(slices), int(first.Rows), int(first.Columns)), np.float32)
    for k, s in enumerate(slices):
        try:
            pixels = s.pixel_array
        except Exception as e:
            raise NndoseError(f"CT slice {s.get('InstanceNumber', k)}: cannot decode pixels ({str(e).splitlines()[0][:100]})") from None
        volume[k] = pixels * float(s.get("RescaleSlope", 1.0)) + float(s.get("RescaleIntercept", 0.0))
    grid = grid_from_geometry([float(v) for v in slices[0].ImagePositionPatient], orientation,
                              [float(v) for v in first.PixelSpacing], step, volume.shape)
    return volume, grid, slices[0]
