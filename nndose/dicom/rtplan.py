"""RTPLAN -> machine, isocenter, static beams and arcs, modality, and DICOM prescriptions."""
from __future__ import annotations

from dataclasses import dataclass

import pydicom

from nndose.errors import NndoseError
from nndose.io.plan_file import Arc, Machine, StaticBeam


@dataclass(frozen=True)
class PlanGeometry:
    machine: Machine
    isocenter_mm: tuple[float, float, float]
    beams: tuple[StaticBeam, ...]
    arcs: tuple[Arc, ...]
    modality: str
    fractions: int | None
    target_doses: dict[int, float]   # ROI number -> prescribed dose (Gy) from DoseReferenceSequence


def _angle(v) -> float:
    return float(v) % 360.0


def read_plan(ds: pydicom.Dataset) -> PlanGeometry:
    beams = [b for b in ds.get("BeamSequence", []) if str(b.get("TreatmentDeliveryType", "TREATMENT")) == "TREATMENT"]
    if not beams:
        raise NndoseError("RTPLAN has no treatment beams")
    statics, arcs, dynamic = [], [], False
    first_cp = None
    for b in beams:
        cps = b.get("ControlPointSequence", [])
        if not cps:
            raise NndoseError(f"RTPLAN beam {b.get('BeamName', b.get('BeamNumber', '?'))} has no control points")
        cp0 = cps[0]
        first_cp = first_cp or (b, cp0)
        if "GantryAngle" not in cp0:
            raise NndoseError(f"RTPLAN beam {b.get('BeamName', '?')}: first control point lacks GantryAngle")
        gantry = _angle(cp0.GantryAngle)
        couch = _angle(cp0.get("PatientSupportAngle", 0.0))
        coll = _angle(cp0.get("BeamLimitingDeviceAngle", 0.0))
        rotation = str(cp0.get("GantryRotationDirection", "NONE"))
        if rotation in ("CW", "CC"):
            stops = [cp.GantryAngle for cp in cps if "GantryAngle" in cp]
            arcs.append(Arc(gantry, _angle(stops[-1]), "CW" if rotation == "CW" else "CCW", couch, coll))
        else:
            statics.append(StaticBeam(gantry, couch, coll))
            dynamic |= len(cps) > 2
    beam, cp0 = first_cp
    if "IsocenterPosition" not in cp0:
        raise NndoseError("RTPLAN: the first beam's first control point lacks IsocenterPosition")
    energy = float(cp0.get("NominalBeamEnergy", 6.0))
    machine = Machine(str(beam.get("TreatmentMachineName", "unnamed")), float(beam.get("SourceAxisDistance", 1000.0)), energy)
    modality = "VMAT" if arcs else ("IMRT" if dynamic else "3D-CRT")
    groups = ds.get("FractionGroupSequence", [])
    fractions = int(groups[0].NumberOfFractionsPlanned) if groups and "NumberOfFractionsPlanned" in groups[0] else None
    doses = {}
    for ref in ds.get("DoseReferenceSequence", []):
        if str(ref.get("DoseReferenceType", "")) == "TARGET" and "ReferencedROINumber" in ref:
            dose = ref.get("TargetPrescriptionDose")
            if dose is not None:
                doses[int(ref.ReferencedROINumber)] = float(dose)
    return PlanGeometry(machine, tuple(float(v) for v in cp0.IsocenterPosition), tuple(statics), tuple(arcs),
                        modality, fractions, doses)
