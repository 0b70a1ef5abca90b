"""3D volumes on a physical grid (DICOM LPS, mm), read and written with SimpleITK.

Arrays are numpy in (z, y, x) index order, as SimpleITK returns them; `Grid` holds the geometry
with spacing and origin in (x, y, z) order and the 3x3 direction matrix (columns = index axes).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from nndose.errors import FileProblem
from nndose.io.atomic import atomic_write


@dataclass(frozen=True)
class Grid:
    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.array(self.spacing_xyz[::-1], dtype=float)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_xyz))

    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self, idx_zyx: np.ndarray) -> np.ndarray:
        """(..., 3) continuous indices in (z, y, x) order -> (..., 3) physical points (x, y, z) in mm."""
        ijk = np.asarray(idx_zyx, dtype=float)[..., ::-1]
        return np.asarray(self.origin_xyz) + (ijk * np.asarray(self.spacing_xyz)) @ self.direction_matrix().T

    def physical_to_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """(..., 3) physical points -> (..., 3) continuous indices in (z, y, x) order."""
        rel = np.asarray(points_xyz, dtype=float) - np.asarray(self.origin_xyz)
        ijk = (rel @ self.direction_matrix()) / np.asarray(self.spacing_xyz)
        return ijk[..., ::-1]

    def axis_coordinates(self) -> list[np.ndarray]:
        """Per index axis (z, y, x), the 1D index ranges (helpers for meshgrids)."""
        return [np.arange(n, dtype=float) for n in self.shape_zyx]

    def physical_points(self) -> np.ndarray:
        """Physical coordinates of every voxel centre: shape (z, y, x, 3)."""
        zz, yy, xx = np.meshgrid(*self.axis_coordinates(), indexing="ij")
        return self.index_to_physical(np.stack([zz, yy, xx], axis=-1))

    def bounds_xyz(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounding box of the voxel centres."""
        corners = np.array([[z, y, x] for z in (0, self.shape_zyx[0] - 1) for y in (0, self.shape_zyx[1] - 1)
                            for x in (0, self.shape_zyx[2] - 1)], dtype=float)
        pts = self.index_to_physical(corners)
        return pts.min(0), pts.max(0)

    def contains_point(self, point_xyz, tol_voxels: float = 0.5) -> bool:
        idx = self.physical_to_index(np.asarray(point_xyz, dtype=float))
        return bool(np.all(idx >= -tol_voxels) and np.all(idx <= np.asarray(self.shape_zyx) - 1 + tol_voxels))

    def same_as(self, other: "Grid", tol: float = 1e-3) -> bool:
        return (self.shape_zyx == other.shape_zyx
                and np.allclose(self.spacing_xyz, other.spacing_xyz, atol=tol)
                and np.allclose(self.origin_xyz, other.origin_xyz, atol=tol)
                and np.allclose(self.direction, other.direction, atol=1e-5))

    def describe(self) -> str:
        return (f"shape(z,y,x)={tuple(self.shape_zyx)} spacing(x,y,z)={tuple(round(s, 4) for s in self.spacing_xyz)} "
                f"origin={tuple(round(o, 3) for o in self.origin_xyz)}")

    def to_json(self) -> dict:
        return {"shape_zyx": list(self.shape_zyx), "spacing_xyz": list(self.spacing_xyz),
                "origin_xyz": list(self.origin_xyz), "direction": list(self.direction)}

    @staticmethod
    def from_json(d: dict) -> "Grid":
        return Grid(tuple(int(v) for v in d["shape_zyx"]), tuple(float(v) for v in d["spacing_xyz"]),
                    tuple(float(v) for v in d["origin_xyz"]), tuple(float(v) for v in d["direction"]))


def grid_of(image: sitk.Image) -> Grid:
    size = image.GetSize()
    return Grid((int(size[2]), int(size[1]), int(size[0])), tuple(float(v) for v in image.GetSpacing()),
                tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()))


def read_image(path: Path | str) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise FileProblem(path, "file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise FileProblem(path, f"cannot read image ({reason[:160]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise FileProblem(path, f"expected a 3D single-component volume, got {image.GetDimension()}D "
                          f"with {image.GetNumberOfComponentsPerPixel()} components")
    return image


def read_header(path: Path | str) -> Grid:
    """Geometry only, without reading voxel data."""
    path = Path(path)
    if not path.is_file():
        raise FileProblem(path, "file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise FileProblem(path, "cannot read image header (corrupt or not a NIfTI file)") from None
    size = reader.GetSize()
    if len(size) != 3:
        raise FileProblem(path, f"expected a 3D volume, got {len(size)}D")
    return Grid((int(size[2]), int(size[1]), int(size[0])), tuple(float(v) for v in reader.GetSpacing()),
                tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))


def read_volume(path: Path | str, dtype=np.float32) -> tuple[np.ndarray, Grid]:
    """Voxel data as (z, y, x) and the grid. NIfTI voxels are read with nibabel, because SimpleITK's
    NIfTI reader silently replaces NaN with 0 and NaNs must be found; geometry comes from SimpleITK."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        image = read_image(path)
        try:
            arr = sitk.GetArrayFromImage(image)
        except RuntimeError:
            raise FileProblem(path, "cannot read voxel data (truncated or corrupt file)") from None
        return arr.astype(dtype, copy=False), grid_of(image)
    grid = read_header(path)
    try:
        arr = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises many types for truncated or corrupt files
        raise FileProblem(path, f"cannot read voxel data ({type(e).__name__})") from None
    if arr.ndim != 3:
        raise FileProblem(path, f"expected a 3D volume, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr.T).astype(dtype, copy=False)
    if arr.shape != grid.shape_zyx:
        raise FileProblem(path, f"voxel data shape {arr.shape} does not match its header {grid.shape_zyx}")
    return arr, grid


def write_volume(path: Path | str, array: np.ndarray, grid: Grid) -> None:
    """Write atomically; the array must be (z, y, x) and match grid.shape_zyx. SimpleITK's writer does
    not report a full disk, so the file is read back whole before it is published."""
    array = np.asarray(array)
    if tuple(array.shape) != tuple(grid.shape_zyx):
        raise ValueError(f"array shape {array.shape} does not match grid {grid.shape_zyx}")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_xyz)
    image.SetDirection(grid.direction)

    def verify(p: Path) -> None:
        try:
            back, _ = read_volume(p, dtype=array.dtype)
        except FileProblem:
            raise OSError(errno.EIO, "the written volume does not read back (truncated)", str(path)) from None
        if back.shape != array.shape:
            raise OSError(errno.EIO, "the written volume does not read back whole", str(path))
    atomic_write(path, lambda p: sitk.WriteImage(image, str(p), useCompression=True), verify)
