"""Beam directions in patient coordinates (DICOM LPS, head-first supine) from IEC 61217 angles.

Gantry 0 puts the source anterior (-y), gantry 90 on the patient's left (+x). A couch rotation turns
the beam about the patient's anterior-posterior (y) axis; the collimator turns the beam's-eye-view
axes about the central axis. Arcs are sampled every `arc_step_deg` degrees at segment midpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nndose.io.plan_file import Arc, TreatmentPlan


@dataclass(frozen=True)
class BeamDirection:
    gantry_deg: float
    couch_deg: float = 0.0
    collimator_deg: float = 0.0
    weight: float = 1.0


@dataclass(frozen=True)
class BeamFrame:
    """Source position and orthonormal beam's-eye-view axes (all in mm, LPS)."""
    source: np.ndarray   # (3,)
    axis: np.ndarray     # unit vector from source towards isocenter
    u: np.ndarray        # BEV axis 1 (crossline)
    v: np.ndarray        # BEV axis 2 (inline, cranio-caudal at couch 0)
    sad_mm: float


def _rot_y(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def beam_frame(direction: BeamDirection, isocenter_mm, sad_mm: float) -> BeamFrame:
    g = math.radians(direction.gantry_deg)
    couch = _rot_y(math.radians(direction.couch_deg))
    to_source = couch @ np.array([math.sin(g), -math.cos(g), 0.0])
    u = couch @ np.array([math.cos(g), math.sin(g), 0.0])
    v = couch @ np.array([0.0, 0.0, 1.0])
    axis = -to_source
    k = math.radians(direction.collimator_deg)
    u, v = math.cos(k) * u + math.sin(k) * v, -math.sin(k) * u + math.cos(k) * v
    iso = np.asarray(isocenter_mm, dtype=float)
    return BeamFrame(iso + sad_mm * to_source, axis, u, v, float(sad_mm))


def arc_directions(arc: Arc, step_deg: float) -> list[BeamDirection]:
    """Control points every ~step_deg along the arc, at the midpoints of equal sub-arcs."""
    n = max(1, int(math.ceil(arc.span_deg / step_deg - 1e-9)))
    sign = 1.0 if arc.direction == "CW" else -1.0
    seg = arc.span_deg / n
    return [BeamDirection((arc.gantry_start_deg + sign * (i + 0.5) * seg) % 360.0, arc.couch_deg,
                          arc.collimator_deg, seg / step_deg) for i in range(n)]


def plan_directions(plan: TreatmentPlan, arc_step_deg: float = 10.0) -> list[BeamDirection]:
    """Every static beam (weight 1) and every sampled arc control point (weight ~1 per step)."""
    dirs = [BeamDirection(b.gantry_deg, b.couch_deg, b.collimator_deg, 1.0) for b in plan.beams]
    for arc in plan.arcs:
        dirs += arc_directions(arc, arc_step_deg)
    return dirs


DELIVERIES = ("static", "arc", "noncoplanar")   # coplanar static beams, coplanar arcs, anything with the couch turned


def directions_by_delivery(plan: TreatmentPlan, arc_step_deg: float = 10.0) -> dict[str, list[BeamDirection]]:
    """plan_directions grouped by delivery (DELIVERIES), each group possibly empty."""
    out: dict[str, list[BeamDirection]] = {d: [] for d in DELIVERIES}
    for b in plan.beams:
        out["static" if b.couch_deg == 0 else "noncoplanar"].append(BeamDirection(b.gantry_deg, b.couch_deg,
                                                                                  b.collimator_deg, 1.0))
    for arc in plan.arcs:
        out["arc" if arc.couch_deg == 0 else "noncoplanar"] += arc_directions(arc, arc_step_deg)
    return out
