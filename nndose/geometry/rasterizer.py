"""Divergent-beam rasterizer: the physics shared by the beam-geometry channel and the phantom dose.

For one beam direction, every voxel gets its beam's-eye-view coordinates (u, v) at the isocenter
plane and its distance r from the source along the central axis. Rays from the source through a
BEV grid sample the CT's relative electron density; their cumulative sum is the radiological depth.
A voxel's primary dose per unit fluence is

    A(p) = (SAD / r)^2 * (1 - exp(-3 d / d_max)) * exp(-mu d) * m(p)

with d the radiological depth, mu and d_max depending on the beam energy, and m(p) = 1 in matter
and 0 in air, so nothing is deposited before a ray enters the body. A fluence map F(u, v) on the same
BEV grid (the targets' projection plus a margin, blurred by the penumbra) shapes the field:
dose = F(u, v) * A(p). BEV grids are aligned to whole multiples of the pixel size, so mirrored and
rotated geometries are sampled at mirrored and rotated points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nndose.geometry.beams import BeamDirection, BeamFrame, beam_frame
from nndose.io.volumes import Grid

AIR_DENSITY_CUTOFF = 0.05  # relative electron density below which a voxel counts as air


def hu_to_density(hu: np.ndarray) -> np.ndarray:
    """Relative electron density from HU (bilinear calibration: air 0, water 1, cortical bone ~1.5)."""
    hu = np.asarray(hu, dtype=np.float32)
    return np.where(hu <= 0, 1.0 + hu / 1000.0, 1.0 + hu / 1950.0).clip(0.0, 3.0).astype(np.float32)


def attenuation_coefficient_per_mm(energy_mv: float) -> float:
    """Effective primary attenuation in water (6 MV ~ 0.0027/mm, 15 MV ~ 0.0017/mm)."""
    return 0.0060 * energy_mv ** -0.45


def depth_of_maximum_mm(energy_mv: float) -> float:
    """Depth of dose maximum in water (6 MV ~ 15 mm)."""
    return 5.6 * energy_mv ** 0.55


@dataclass(frozen=True)
class BevGrid:
    """A 2D grid in the isocenter plane: pixel centres at (iu0 + i) * pixel, (iv0 + j) * pixel."""
    iu0: int
    iv0: int
    nu: int
    nv: int
    pixel_mm: float

    @property
    def u(self) -> np.ndarray:
        return (self.iu0 + np.arange(self.nu)) * self.pixel_mm

    @property
    def v(self) -> np.ndarray:
        return (self.iv0 + np.arange(self.nv)) * self.pixel_mm


def project(points: np.ndarray, frame: BeamFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) physical points -> (u, v) at the isocenter plane and central-axis distance r."""
    rel = points - frame.source
    r = rel @ frame.axis
    scale = frame.sad_mm / np.maximum(r, 1e-6)
    return (rel @ frame.u) * scale, (rel @ frame.v) * scale, r


def subvoxel_points(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """Physical points of a mask's voxels, each voxel sampled at its 8 quarter-spacing corners."""
    idx = np.argwhere(mask).astype(float)
    offsets = np.array([[dz, dy, dx] for dz in (-0.25, 0.25) for dy in (-0.25, 0.25) for dx in (-0.25, 0.25)])
    pts = (idx[:, None, :] + offsets[None]).reshape(-1, 3)
    return grid.index_to_physical(pts)


def bev_grid_around(u: np.ndarray, v: np.ndarray, pixel_mm: float, pad_mm: float) -> BevGrid:
    iu0 = int(math.floor((u.min() - pad_mm) / pixel_mm))
    iv0 = int(math.floor((v.min() - pad_mm) / pixel_mm))
    iu1 = int(math.ceil((u.max() + pad_mm) / pixel_mm))
    iv1 = int(math.ceil((v.max() + pad_mm) / pixel_mm))
    return BevGrid(iu0, iv0, iu1 - iu0 + 1, iv1 - iv0 + 1, pixel_mm)


def splat(bev: BevGrid, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary BEV image of projected points."""
    img = np.zeros((bev.nu, bev.nv), dtype=bool)
    iu = np.rint(u / bev.pixel_mm).astype(int) - bev.iu0
    iv = np.rint(v / bev.pixel_mm).astype(int) - bev.iv0
    ok = (iu >= 0) & (iu < bev.nu) & (iv >= 0) & (iv < bev.nv)
    img[iu[ok], iv[ok]] = True
    return img


def aperture(bev: BevGrid, projection: np.ndarray, margin_mm: float, penumbra_mm: float,
             block: np.ndarray | None = None) -> np.ndarray:
    """Fluence map: projection grown by margin_mm (minus `block`), edges blurred with sigma penumbra_mm."""
    projection = ndimage.binary_closing(projection, iterations=2, border_value=0) | projection
    projection = ndimage.binary_fill_holes(projection)
    if projection.any():
        dist = ndimage.distance_transform_edt(~projection, sampling=bev.pixel_mm)
        field = dist <= margin_mm
    else:
        field = projection
    if block is not None:
        field = field & ~block
    fluence = field.astype(np.float32)
    if penumbra_mm > 0:
        fluence = ndimage.gaussian_filter(fluence, penumbra_mm / bev.pixel_mm, mode="constant")
    return fluence


@dataclass
class BeamProjection:
    """One beam direction's geometry on a volume: voxels in reach and their per-fluence primary dose."""
    voxels: np.ndarray      # flat voxel indices within the BEV grid's reach
    iu: np.ndarray          # fractional BEV pixel coordinates of those voxels
    iv: np.ndarray
    primary: np.ndarray     # dose per unit fluence (inverse square, depth, matter)
    bev: BevGrid

    def deposit(self, fluence: np.ndarray, shape) -> np.ndarray:
        """Dose volume (flattened to `shape`) for a fluence map on this projection's BEV grid."""
        out = np.zeros(int(np.prod(shape)), dtype=np.float32)
        f = ndimage.map_coordinates(fluence, [self.iu, self.iv], order=1, mode="constant", cval=0.0)
        out[self.voxels] = f * self.primary
        return out.reshape(shape)


def project_beam(density: np.ndarray, grid: Grid, frame: BeamFrame, bev: BevGrid, energy_mv: float,
                 points: np.ndarray | None = None, flat_index: np.ndarray | None = None,
                 step_fraction: float = 0.5) -> BeamProjection:
    """Ray-trace one beam direction: radiological depth on rays through `bev`, sampled at every voxel.

    `points` (optional, for speed) must be grid.physical_points().reshape(-1, 3), or the physical
    points of the voxels with flat indices `flat_index` (e.g. the body's): only those get a dose,
    and rays start at the first of them they reach. Rays are sampled every `step_fraction` of the
    finest voxel spacing.
    """
    if points is None:
        points = grid.physical_points().reshape(-1, 3)
    u, v, r = project(points, frame)
    iu = u / bev.pixel_mm - bev.iu0
    iv = v / bev.pixel_mm - bev.iv0
    reach = np.flatnonzero((iu >= -1) & (iu <= bev.nu) & (iv >= -1) & (iv <= bev.nv) & (r > 0))
    voxels = reach if flat_index is None else flat_index[reach]
    iu, iv, r = iu[reach], iv[reach], r[reach]
    # Radiological depth on a coarser BEV grid (pixel ~ voxel spacing) and central-axis steps of half a voxel.
    step = step_fraction * float(min(grid.spacing_xyz))
    dpix = max(bev.pixel_mm, float(min(grid.spacing_xyz)))
    du = (iu + bev.iu0) * bev.pixel_mm / dpix
    dv = (iv + bev.iv0) * bev.pixel_mm / dpix
    dbev = BevGrid(int(math.floor(du.min())) - 1, int(math.floor(dv.min())) - 1, 0, 0, dpix) if len(du) else None
    if dbev is None:
        return BeamProjection(voxels, iu, iv, np.zeros(0, np.float32), bev)
    dbev = BevGrid(dbev.iu0, dbev.iv0, int(math.ceil(du.max())) - dbev.iu0 + 2, int(math.ceil(dv.max())) - dbev.iv0 + 2, dpix)
    k0 = int(math.floor(max(r.min(), 1.0) / step)) - 2
    k1 = int(math.ceil(r.max() / step)) + 2
    rs = np.arange(k0, k1 + 1) * step
    # Ray sample points p = s + r * (axis + u/SAD e_u + v/SAD e_v): central-axis distance r, BEV (u, v).
    dirs = (frame.axis[None, None, :] + dbev.u[:, None, None] / frame.sad_mm * frame.u
            + dbev.v[None, :, None] / frame.sad_mm * frame.v)                         # (nu, nv, 3)
    stretch = np.linalg.norm(dirs, axis=-1)                                           # path length per unit r
    # The grid's physical -> index map is affine, so ray samples are computed in index space directly.
    origin_idx = grid.physical_to_index(np.zeros(3))
    src_idx = grid.physical_to_index(frame.source)
    dir_idx = grid.physical_to_index(dirs) - origin_idx                               # (nu, nv, 3)
    idx = src_idx + rs[None, None, :, None] * dir_idx[:, :, None, :]                  # (nu, nv, nr, 3)
    rho = ndimage.map_coordinates(density, idx.reshape(-1, 3).T, order=1, mode="constant",
                                  cval=0.0).reshape(idx.shape[:3])
    depth = (np.cumsum(rho, axis=2) - 0.5 * rho) * (step * stretch[:, :, None])
    d = ndimage.map_coordinates(depth.astype(np.float32), [du - dbev.iu0, dv - dbev.iv0, r / step - k0],
                                order=1, mode="nearest")
    matter = np.clip((density.ravel()[voxels] - AIR_DENSITY_CUTOFF) / (2 * AIR_DENSITY_CUTOFF), 0.0, 1.0)
    mu = attenuation_coefficient_per_mm(energy_mv)
    buildup = 1.0 - np.exp(-3.0 * d / depth_of_maximum_mm(energy_mv))
    primary = (frame.sad_mm / r) ** 2 * buildup * np.exp(-mu * d) * matter
    return BeamProjection(voxels, iu, iv, primary.astype(np.float32), bev)


def beam_geometry_channel(ct_hu: np.ndarray, grid: Grid, target_mask: np.ndarray, directions: list[BeamDirection],
                          isocenter_mm, sad_mm: float, energy_mv: float, margin_mm: float = 5.0,
                          penumbra_mm: float = 3.0, pixel_mm: float = 2.0, within: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-dose of unmodulated fields conformed to the targets' BEV, summed over beam directions.

    Normalized to a mean of 1 inside the targets, so the channel is comparable across cases.
    `within` (e.g. the body): dose only there, zero elsewhere, and rays traced from where they enter
    it (matter outside, such as the couch, does not attenuate); several times faster. Rays are
    sampled every voxel spacing: the channel differs by < 1 % of its target mean from half-voxel steps.
    """
    total = beam_geometry_parts(ct_hu, grid, target_mask, {"all": directions}, isocenter_mm, sad_mm, energy_mv,
                                margin_mm, penumbra_mm, pixel_mm, within)["all"]
    return total / target_mean(total, target_mask)


def target_mean(total: np.ndarray, target_mask: np.ndarray) -> float:
    """The mean of `total` inside the targets: what gives it a mean of 1 there (1 where it has none)."""
    mean = float(total[target_mask].mean()) if target_mask.any() else 0.0
    return mean if mean > 0 else 1.0


def beam_geometry_parts(ct_hu: np.ndarray, grid: Grid, target_mask: np.ndarray, groups: dict[str, list[BeamDirection]],
                        isocenter_mm, sad_mm: float, energy_mv: float, margin_mm: float = 5.0, penumbra_mm: float = 3.0,
                        pixel_mm: float = 2.0, within: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """beam_geometry_channel's sum for each group of directions, not normalized; the density, voxel
    points and target projection computed once for every group."""
    density = hu_to_density(ct_hu)
    flat_index = None if within is None else np.flatnonzero(within | target_mask)
    points = grid.physical_points().reshape(-1, 3) if flat_index is None else grid.index_to_physical(
        np.stack(np.unravel_index(flat_index, ct_hu.shape), axis=1).astype(float))
    tpoints = subvoxel_points(target_mask, grid)
    parts = {name: np.zeros(ct_hu.shape, dtype=np.float32) for name in groups}
    if len(tpoints) == 0:
        return parts
    for name, directions in groups.items():
        for direction in directions:
            frame = beam_frame(direction, isocenter_mm, sad_mm)
            u, v, _ = project(tpoints, frame)
            bev = bev_grid_around(u, v, pixel_mm, margin_mm + 3.0 * penumbra_mm)
            proj = project_beam(density, grid, frame, bev, energy_mv, points, flat_index, step_fraction=1.0)
            fluence = aperture(bev, splat(bev, u, v), margin_mm, penumbra_mm)
            parts[name] += direction.weight * proj.deposit(fluence, ct_hu.shape)
    return parts
