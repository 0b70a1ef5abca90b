"""The analytic dose engine behind the phantom dataset.

Per beam direction (static fields, and arcs sampled every few degrees), the rasterizer of
`nndose.geometry.rasterizer` gives divergent rays from the source at the machine's SAD, attenuated by
the radiological depth through the CT and by the inverse square. Each direction carries segments:
one aperture per target (its beam's-eye view plus a margin, with penumbra) and, for IMRT/VMAT, one
aperture of all targets with the organs' projections blocked. Non-negative segment weights
(grouped per beam, or per 40-degree arc sector) are fitted by least squares so that every target
voxel reaches its prescription while organs and normal tissue are pushed towards zero; 3D-CRT gets
one open aperture per beam and target-only fitting. A Gaussian scatter kernel is added, dose is kept
inside the body, and the plan is normalized so that 95 % of the highest-dose target gets its
prescription (D95 = Rx).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage, optimize

from nndose.geometry.beams import beam_frame, plan_directions
from nndose.geometry.rasterizer import (aperture, bev_grid_around, hu_to_density, project, project_beam,
                                        splat, subvoxel_points)
from nndose.io.plan_file import TreatmentPlan
from nndose.io.volumes import Grid


@dataclass(frozen=True)
class PlanningStyle:
    """Knobs of the optimizer; a second style (e.g. stronger organ sparing) makes a new planning style.

    `organ_weights`: (organ, weight) pairs overriding `oar_weight` for the named organs (e.g. weight 0
    plans deliberately without sparing that organ)."""
    name: str = "standard"
    oar_weight: float = 0.35
    normal_tissue_weight: float = 0.08
    margin_mm: float = 5.0
    penumbra_mm: float = 3.5
    scatter_fraction: float = 0.2
    scatter_sigma_mm: float = 10.0
    arc_step_deg: float = 20.0
    arc_sector_deg: float = 40.0
    arc_smoothness: float = 0.5
    rows_per_group: int = 2500
    organ_weights: tuple[tuple[str, float], ...] = ()

    def organ_weight(self, organ: str) -> float:
        return dict(self.organ_weights).get(organ, self.oar_weight)


def degraded(style: PlanningStyle, organ: str, weight: float) -> PlanningStyle:
    """`style` with `organ` weighted `weight` in the optimizer (other overrides kept), named after it."""
    weights = tuple((o, w) for o, w in style.organ_weights if o != organ) + ((organ, float(weight)),)
    return replace(style, name=f"{style.name}_{organ}_{weight:g}", organ_weights=weights)


STYLES = {"standard": PlanningStyle(),
          "sparing": PlanningStyle(name="sparing", oar_weight=3.0, normal_tissue_weight=0.3)}


def _sample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= n else rng.choice(idx, n, replace=False)


def compute_dose(ct_hu: np.ndarray, grid: Grid, structures: dict[str, np.ndarray], kinds: dict[str, str],
                 plan: TreatmentPlan, style: PlanningStyle = PlanningStyle(), seed: int = 0) -> np.ndarray:
    """Planned dose in Gy (float32, zero outside the body) for a phantom case."""
    rng = np.random.default_rng(seed)
    shape = ct_hu.shape
    density = hu_to_density(ct_hu)
    points = grid.physical_points().reshape(-1, 3)
    targets = sorted((p for p in plan.prescriptions if p.structure in structures), key=lambda p: -p.dose_gy)
    organs = [n for n, k in kinds.items() if k == "oar" and n in structures]
    body = next(structures[n] for n, k in kinds.items() if k == "body" and n in structures)
    target_union = np.zeros(shape, bool)
    for t in targets:
        target_union |= structures[t.structure]
    # Organs largely inside targets (e.g. the liver holding a liver tumour) cannot be blocked.
    blockable = [o for o in organs if np.count_nonzero(structures[o] & target_union) < 0.2 * np.count_nonzero(structures[o])]
    oar_union = np.zeros(shape, bool)
    for o in blockable:
        oar_union |= structures[o] & ~target_union
    modulated = plan.modality != "3D-CRT"
    tpts = {t.structure: subvoxel_points(structures[t.structure], grid) for t in targets}
    all_t = np.concatenate(list(tpts.values()))
    opts = subvoxel_points(oar_union, grid) if modulated and oar_union.any() else None

    columns: dict[tuple, np.ndarray] = {}
    for i, direction in enumerate(plan_directions(plan, style.arc_step_deg)):
        frame = beam_frame(direction, plan.isocenter_mm, plan.machine.sad_mm)
        u, v, _ = project(all_t, frame)
        bev = bev_grid_around(u, v, 2.0, style.margin_mm + 3 * style.penumbra_mm)
        proj = project_beam(density, grid, frame, bev, plan.machine.energy_mv, points)
        group = i if i < len(plan.beams) else ("arc", int(direction.gantry_deg // style.arc_sector_deg), direction.couch_deg)
        apertures = {"open": aperture(bev, splat(bev, u, v), style.margin_mm, style.penumbra_mm)}
        if modulated:
            for t in targets[1:] if len(targets) > 1 else []:
                tu, tv, _ = project(tpts[t.structure], frame)
                apertures[t.structure] = aperture(bev, splat(bev, tu, tv), style.margin_mm, style.penumbra_mm)
            tu, tv, _ = project(tpts[targets[0].structure], frame)
            apertures["boost"] = aperture(bev, splat(bev, tu, tv), style.margin_mm, style.penumbra_mm)
            if opts is not None:
                ou, ov, _ = project(opts, frame)
                block = ndimage.binary_dilation(splat(bev, ou, ov), iterations=1) & ~splat(bev, u, v)
                apertures["spare"] = aperture(bev, splat(bev, u, v), style.margin_mm, style.penumbra_mm, block=block)
        for name, fluence in apertures.items():
            key = (group, name)
            dose = proj.deposit(fluence, shape).ravel() * direction.weight
            columns[key] = columns[key] + dose if key in columns else dose

    keys = list(columns)
    A = np.stack([columns[k] for k in keys], axis=1)  # (voxels, segments)
    rx_map = np.zeros(shape, np.float32)
    for t in reversed(targets):  # highest prescription written last wins
        rx_map[structures[t.structure]] = t.dose_gy
    rows, goals, weights = [], [], []
    for t in targets:
        idx = _sample(np.flatnonzero(structures[t.structure].ravel() & (rx_map.ravel() == t.dose_gy)), style.rows_per_group, rng)
        rows.append(idx); goals.append(np.full(len(idx), t.dose_gy)); weights.append(np.ones(len(idx)))
    if modulated:
        for o in blockable:
            idx = _sample(np.flatnonzero((structures[o] & ~target_union).ravel()), style.rows_per_group // 2, rng)
            rows.append(idx); goals.append(np.zeros(len(idx))); weights.append(np.full(len(idx), style.organ_weight(o)))
    ring = ndimage.distance_transform_edt(~target_union, sampling=grid.spacing_zyx)
    normal = body & ~target_union & (ring > 10.0)
    idx = _sample(np.flatnonzero(normal.ravel()), style.rows_per_group, rng)
    rows.append(idx); goals.append(np.zeros(len(idx))); weights.append(np.full(len(idx), style.normal_tissue_weight))
    r = np.concatenate(rows)
    w = np.concatenate(weights)
    scale = A[r].max() or 1.0
    M = (A[r] / scale) * w[:, None]
    b = np.concatenate(goals) * w
    x, _ = optimize.nnls(M, b, maxiter=50 * A.shape[1])
    if plan.arcs and x.any():
        # An arc delivers dose all along its path: pull every segment weight towards the mean of the
        # first solution, so the fit modulates the arc instead of collapsing it onto a few sectors.
        lam = style.arc_smoothness * np.sqrt(len(r) / len(x))
        reg = lam * np.eye(len(x))
        x, _ = optimize.nnls(np.vstack([M, reg]), np.concatenate([b, lam * np.full(len(x), x.mean())]),
                             maxiter=50 * A.shape[1])
    dose = (A @ (x / scale)).reshape(shape).astype(np.float32)
    sigma = style.scatter_sigma_mm / grid.spacing_zyx
    dose = (1 - style.scatter_fraction) * dose + style.scatter_fraction * ndimage.gaussian_filter(dose, sigma)
    dose = np.where(body, dose, 0.0).astype(np.float32)
    primary = targets[0]
    d95 = np.percentile(dose[structures[primary.structure]], 5)
    return (dose * (primary.dose_gy / d95)).astype(np.float32) if d95 > 0 else dose
