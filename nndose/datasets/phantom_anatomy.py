"""Analytic anatomies for the built-in phantom dataset: head-and-neck, prostate, lung and liver.

Each site is built from ellipsoids and elliptic cylinders in LPS millimetres (x to the patient's
left, y posterior, z superior), centred on the grid, with per-case random variation of sizes and
positions, tissue HU values and noise. Targets are clipped to 5 mm inside the body.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nndose.io.volumes import Grid

SITES = ("head_neck", "prostate", "lung", "liver")
TARGETS = ("PTV_high", "PTV_low")
ORGANS = ("SpinalCord", "Brainstem", "Parotid_L", "Parotid_R", "Mandible", "Larynx", "Esophagus",
          "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R", "Lung_L", "Lung_R", "Heart",
          "Liver", "Kidney_L", "Kidney_R", "Stomach")
BODY = "Body"


def phantom_kinds() -> dict[str, str]:
    """The phantoms' structure vocabulary: name -> target, oar or body."""
    return {**{t: "target" for t in TARGETS}, **{o: "oar" for o in ORGANS}, BODY: "body"}

# (in-plane spacing mm, slice spacing mm, slices, body half-axes x/y mm)
_SITE_GRID = {"head_neck": (4.5, 4.0, 48, (80.0, 100.0)), "prostate": (6.0, 5.0, 40, (170.0, 115.0)),
              "lung": (6.0, 5.0, 40, (165.0, 110.0)), "liver": (6.0, 5.0, 40, (160.0, 115.0))}


@dataclass
class Anatomy:
    grid: Grid
    ct: np.ndarray                   # HU, float32 (z, y, x)
    structures: dict[str, np.ndarray]
    target_center: np.ndarray        # a point inside the high-dose target (LPS mm)


class _Painter:
    def __init__(self, grid: Grid, rng: np.random.Generator):
        pts = grid.physical_points()
        self.x, self.y, self.z = pts[..., 0], pts[..., 1], pts[..., 2]
        self.rng = rng
        self.ct = np.full(grid.shape_zyx, -1000.0, dtype=np.float32)

    def jitter(self, value: float, frac: float = 0.1) -> float:
        return float(value * (1.0 + self.rng.uniform(-frac, frac)))

    def ellipsoid(self, c, r) -> np.ndarray:
        return ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2 + ((self.z - c[2]) / r[2]) ** 2 <= 1.0

    def cylinder(self, c, r, zmin=-1e9, zmax=1e9) -> np.ndarray:
        return ((((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2) <= 1.0) & (self.z >= zmin) & (self.z <= zmax)

    def paint(self, mask: np.ndarray, hu: float) -> None:
        self.ct[mask] = hu


def _spine(p: _Painter, y: float, s: dict, body: np.ndarray) -> None:
    vert = p.cylinder((0, y), (p.jitter(15), p.jitter(14))) & body
    p.paint(vert, 700)
    cord = p.cylinder((0, y), (5.0, 5.0)) & body
    p.paint(cord, 30)
    s["SpinalCord"] = cord


def _head_neck(p: _Painter, s: dict, body: np.ndarray, sib: bool) -> np.ndarray:
    _spine(p, p.jitter(40), s, body)
    s["Brainstem"] = p.ellipsoid((0, 25, p.jitter(70)), (12, 12, 18)) & body
    p.paint(s["Brainstem"], 35)
    outer = p.cylinder((0, -10), (55, 62), 5, 35)
    inner = p.cylinder((0, -10), (45, 52))
    s["Mandible"] = outer & ~inner & (p.y < -5) & body
    p.paint(s["Mandible"], 900)
    for side, sign in (("L", 1), ("R", -1)):
        s[f"Parotid_{side}"] = p.ellipsoid((sign * p.jitter(50), 8, p.jitter(40)), (14, 18, 20)) & body
        p.paint(s[f"Parotid_{side}"], -20)
    s["Larynx"] = p.ellipsoid((0, -40, p.jitter(-35)), (16, 13, 22)) & body
    p.paint(s["Larynx"], 20)
    p.paint(p.cylinder((0, -40), (6, 6), -80, -25), -900)  # airway
    s["Esophagus"] = p.cylinder((0, 18), (7, 7), -100, -10) & body
    p.paint(s["Esophagus"], 10)
    side = p.rng.choice([-1, 1])
    c = np.array([side * p.rng.uniform(10, 35), p.rng.uniform(-20, 0), p.rng.uniform(-15, 25)])
    high = p.ellipsoid(c, [p.rng.uniform(16, 26)] * 3)
    low = p.ellipsoid((0, -5, c[2] - 15), (60, 40, 50)) & ~high if sib else None
    return c, high, low


def _prostate(p: _Painter, s: dict, body: np.ndarray, sib: bool):
    for side, sign in (("L", 1), ("R", -1)):
        s[f"FemoralHead_{side}"] = p.ellipsoid((sign * p.jitter(92), 5, -10), (24, 24, 24)) & body
        p.paint(s[f"FemoralHead_{side}"], 800)
    s["Bladder"] = p.ellipsoid((0, p.jitter(-30), p.jitter(35)), (p.jitter(38), 30, 30)) & body
    p.paint(s["Bladder"], 10)
    s["Rectum"] = p.cylinder((0, p.jitter(45)), (15, 15), -60, 45) & body
    p.paint(s["Rectum"], -30)
    p.paint(p.cylinder((0, 45), (5, 5), -20, 20) & (p.rng.uniform() < 0.5), -800)  # rectal gas
    c = np.array([p.rng.uniform(-5, 5), p.rng.uniform(5, 15), p.rng.uniform(-5, 5)])
    high = p.ellipsoid(c, (p.jitter(28), p.jitter(24), p.jitter(26)))
    low = p.ellipsoid((0, 15, 25), (48, 32, 42)) & ~high if sib else None
    return c, high, low


def _lung(p: _Painter, s: dict, body: np.ndarray, sib: bool):
    for side, sign in (("L", 1), ("R", -1)):
        s[f"Lung_{side}"] = p.ellipsoid((sign * p.jitter(72), 5, 10), (p.jitter(55), 72, 95)) & body
        p.paint(s[f"Lung_{side}"], -800)
    s["Heart"] = p.ellipsoid((25, -25, p.jitter(-25)), (45, 40, 40)) & body
    p.paint(s["Heart"], 40)
    _spine(p, p.jitter(72), s, body)
    s["Esophagus"] = p.cylinder((0, 42), (7, 7)) & body
    p.paint(s["Esophagus"], 10)
    side = p.rng.choice([-1, 1])
    c = np.array([side * p.rng.uniform(55, 80), p.rng.uniform(-20, 30), p.rng.uniform(-20, 50)])
    r = p.rng.uniform(14, 28)
    high = p.ellipsoid(c, (r, r, r))
    p.paint(high & body, 30)  # the tumour is soft tissue inside the lung
    low = (p.ellipsoid(c, (r + 15, r + 15, r + 15)) | p.ellipsoid((side * 15, 20, c[2]), (18, 18, 25))) & ~high if sib else None
    return c, high, low


def _liver(p: _Painter, s: dict, body: np.ndarray, sib: bool):
    s["Liver"] = p.ellipsoid((p.jitter(-45), 0, 20), (p.jitter(85), 70, 60)) & body
    p.paint(s["Liver"], 60)
    for side, sign in (("L", 1), ("R", -1)):
        s[f"Kidney_{side}"] = p.ellipsoid((sign * p.jitter(62), 55, -25), (25, 20, 45)) & body
        p.paint(s[f"Kidney_{side}"], 30)
    s["Stomach"] = p.ellipsoid((p.jitter(55), -20, 30), (35, 30, 35)) & body
    p.paint(s["Stomach"], -50)
    _spine(p, p.jitter(68), s, body)
    c = np.array([p.rng.uniform(-75, -25), p.rng.uniform(-25, 25), p.rng.uniform(0, 40)])
    r = p.rng.uniform(15, 30)
    high = p.ellipsoid(c, (r, r, r))
    low = p.ellipsoid(c, (r + 15, r + 15, r + 15)) & ~high if sib else None
    return c, high, low


_BUILDERS = {"head_neck": _head_neck, "prostate": _prostate, "lung": _lung, "liver": _liver}


def make_anatomy(site: str, rng: np.random.Generator, sib: bool) -> Anatomy:
    sxy, sz, nz, (ax, ay) = _SITE_GRID[site]
    sxy *= rng.uniform(0.95, 1.05)
    n = 64
    grid = Grid((nz, n, n), (sxy, sxy, sz), (-(n - 1) / 2 * sxy, -(n - 1) / 2 * sxy, -(nz - 1) / 2 * sz))
    p = _Painter(grid, rng)
    ax, ay = p.jitter(ax), p.jitter(ay)
    body = p.cylinder((0, 0), (ax, ay))
    p.paint(body, 30)
    p.paint(body & ~p.cylinder((0, 0), (ax - 10, ay - 10)), -90)  # subcutaneous fat
    s: dict[str, np.ndarray] = {}
    center, high, low = _BUILDERS[site](p, s, body, sib)
    inner = ndimage.distance_transform_edt(body, sampling=grid.spacing_zyx) > 5.0
    s["PTV_high"] = high & inner
    if low is not None and (low & inner).any():
        s["PTV_low"] = low & inner
    noise = ndimage.gaussian_filter(rng.normal(0, 25, grid.shape_zyx), 0.7).astype(np.float32)
    ct = np.where(body, p.ct + noise, -1000.0).round().astype(np.float32)
    s = {k: v for k, v in s.items() if v.any()}
    s[BODY] = body
    return Anatomy(grid, ct, s, center)
