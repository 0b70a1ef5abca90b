"""Input channels by name: ct, prescription, one per organ, body, beam_dose (or one beam channel per
delivery, beam_dose_static / _arc / _noncoplanar, which sum to it); and their padding."""
from __future__ import annotations

import numpy as np

from nndose.geometry.beams import DELIVERIES, directions_by_delivery
from nndose.geometry.rasterizer import beam_geometry_parts, target_mean
from nndose.io.plan_file import TreatmentPlan
from nndose.io.volumes import Grid
from nndose.plans import ORGAN_PREFIX, BeamChannelSettings, CTNormalization


def normalize_ct(ct_hu: np.ndarray, norm: CTNormalization) -> np.ndarray:
    """Clip to the dataset's body HU percentiles, then z-score with the body mean and std."""
    clipped = np.clip(ct_hu, norm.clip_low, norm.clip_high)
    return ((clipped - norm.mean) / max(norm.std, 1e-6)).astype(np.float32)


def prescription_map(structures: dict[str, np.ndarray], plan: TreatmentPlan, shape) -> np.ndarray:
    """Each target voxel holds its prescription / reference dose; overlaps take the highest."""
    out = np.zeros(shape, dtype=np.float32)
    ref = plan.reference_dose_gy
    for p in sorted(plan.prescriptions, key=lambda p: p.dose_gy):
        if p.structure in structures:
            out[structures[p.structure]] = p.dose_gy / ref
    return out


def organ_channel(organ: str) -> str:
    return f"{ORGAN_PREFIX}{organ}"


BEAM_CHANNEL = "beam_dose"


def delivery_channel(delivery: str) -> str:
    return f"{BEAM_CHANNEL}_{delivery}"


def beam_channels(ct_hu: np.ndarray, grid: Grid, body: np.ndarray, plan: TreatmentPlan, target_union: np.ndarray,
                  beam: BeamChannelSettings) -> dict[str, np.ndarray]:
    """beam_dose (every direction, mean 1 in the targets) and each delivery's share of it, on its scale."""
    parts = beam_geometry_parts(ct_hu, grid, target_union, directions_by_delivery(plan, beam.arc_step_deg),
                                plan.isocenter_mm, plan.machine.sad_mm, plan.machine.energy_mv, beam.margin_mm,
                                beam.penumbra_mm, beam.pixel_mm, within=body)
    scale = target_mean(sum(parts[d] for d in DELIVERIES), target_union)
    channels = {delivery_channel(d): parts[d] * body / scale for d in DELIVERIES}
    return {BEAM_CHANNEL: sum(channels.values()), **channels}


def build_channels(names, ct_hu: np.ndarray, grid: Grid, structures: dict[str, np.ndarray], body: np.ndarray,
                   plan: TreatmentPlan, targets: list[str], ct_norm: CTNormalization,
                   beam: BeamChannelSettings) -> np.ndarray:
    """Stack the named channels (C, Z, Y, X) float32 on `grid`."""
    out = np.zeros((len(names),) + tuple(ct_hu.shape), dtype=np.float32)
    target_union = np.zeros(ct_hu.shape, bool)
    for t in targets:
        if t in structures:
            target_union |= structures[t]
    beams = None
    for i, name in enumerate(names):
        if name == "ct":
            out[i] = normalize_ct(ct_hu, ct_norm)
        elif name == "prescription":
            out[i] = prescription_map(structures, plan, ct_hu.shape)
        elif name == "body":
            out[i] = body
        elif name.startswith(BEAM_CHANNEL):
            beams = beams or beam_channels(ct_hu, grid, body, plan, target_union, beam)
            if name not in beams:
                raise ValueError(f"unknown channel {name!r}")
            out[i] = beams[name]
        elif name.startswith(ORGAN_PREFIX):
            organ = name[len(ORGAN_PREFIX):]
            if organ in structures:
                out[i] = structures[organ]
        else:
            raise ValueError(f"unknown channel {name!r}")
    return out


def channel_pad_values(channels, ct_norm: CTNormalization) -> list[float]:
    """Padding per channel outside the volume: air for the CT, zero for masks, prescription and beam."""
    air = (max(-1000.0, ct_norm.clip_low) - ct_norm.mean) / ct_norm.std
    return [air if c == "ct" else 0.0 for c in channels]
