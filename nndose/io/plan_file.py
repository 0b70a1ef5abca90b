"""plan.json: the treatment plan of one case (site, modality, machine, prescriptions, beam geometry).

Coordinates are DICOM patient coordinates (LPS, mm); angles follow IEC 61217 in degrees [0, 360).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nndose.errors import NndoseError
from nndose.io.json_file import read_json

MODALITIES = ("IMRT", "VMAT", "3D-CRT")
ARC_DIRECTIONS = ("CW", "CCW")
MAX_DOSE_PER_FRACTION_GY = 35.0   # above single-fraction radiosurgery (24-30 Gy)
MAX_FRACTIONS = 100               # above hyperfractionated courses (e.g. 1.2 Gy twice daily to 81.6 Gy)


@dataclass(frozen=True)
class Machine:
    name: str
    sad_mm: float
    energy_mv: float


@dataclass(frozen=True)
class Prescription:
    structure: str
    dose_gy: float
    fractions: int


@dataclass(frozen=True)
class StaticBeam:
    gantry_deg: float
    couch_deg: float = 0.0
    collimator_deg: float = 0.0


@dataclass(frozen=True)
class Arc:
    gantry_start_deg: float
    gantry_stop_deg: float
    direction: str = "CW"
    couch_deg: float = 0.0
    collimator_deg: float = 0.0

    @property
    def span_deg(self) -> float:
        """Angular length travelled from start to stop in the arc's direction (a full circle is 360)."""
        if self.direction == "CW":
            span = (self.gantry_stop_deg - self.gantry_start_deg) % 360.0
        else:
            span = (self.gantry_start_deg - self.gantry_stop_deg) % 360.0
        return 360.0 if span == 0.0 else span


@dataclass(frozen=True)
class TreatmentPlan:
    site: str
    modality: str
    machine: Machine
    prescriptions: tuple[Prescription, ...]
    isocenter_mm: tuple[float, float, float]
    beams: tuple[StaticBeam, ...] = field(default_factory=tuple)
    arcs: tuple[Arc, ...] = field(default_factory=tuple)
    patient_id: str | None = None   # plans of one patient share it; cross-validation keeps them together

    @property
    def reference_dose_gy(self) -> float:
        """The case's highest prescription: the scale of the prescription map and of the training target."""
        return max(p.dose_gy for p in self.prescriptions)

    @property
    def non_coplanar(self) -> bool:
        """Whether any beam or arc is delivered with the couch turned."""
        return any(b.couch_deg != 0 for b in self.beams) or any(a.couch_deg != 0 for a in self.arcs)

    def prescription_of(self, structure: str) -> Prescription | None:
        return next((p for p in self.prescriptions if p.structure == structure), None)

    def to_json(self) -> dict:
        return {"site": self.site, "modality": self.modality, "machine": asdict(self.machine),
                "prescriptions": [asdict(p) for p in self.prescriptions],
                "isocenter_mm": list(self.isocenter_mm),
                "beams": [asdict(b) for b in self.beams], "arcs": [asdict(a) for a in self.arcs],
                **({"patient_id": self.patient_id} if self.patient_id else {})}


class InvalidPlan(NndoseError):
    """plan.json content that cannot be used; `problems` lists every one found."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __reduce__(self):
        return type(self), (self.source, self.problems)


def _number(d: dict, key: str, where: str, problems: list[str], default=None) -> float | None:
    if key not in d:
        if default is None:
            problems.append(f"{where}: missing '{key}'")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        problems.append(f"{where}: '{key}' must be a finite number, got {v!r}")
        return default
    return float(v)


def _angle(d: dict, key: str, where: str, problems: list[str], default=None) -> float | None:
    v = _number(d, key, where, problems, default)
    if v is not None and not (0.0 <= v < 360.0):
        problems.append(f"{where}: {key}={v} outside [0, 360) (IEC 61217 degrees)")
    elif v is not None and key == "couch_deg" and 90.0 < v < 270.0:
        problems.append(f"{where}: couch_deg={v} is not a couch rotation a linac reaches (IEC 61217: 0..90 or 270..360)")
    return v


def parse_plan(d: object, source: str = "plan.json") -> TreatmentPlan:
    """Validate and convert a plan.json object; raises InvalidPlan listing every problem."""
    problems: list[str] = []
    if not isinstance(d, dict):
        raise InvalidPlan(source, ["top level must be a JSON object"])
    site = d.get("site")
    if not isinstance(site, str) or not site:
        problems.append("missing 'site' (a name such as head_neck)")
    modality = d.get("modality")
    if modality not in MODALITIES:
        problems.append(f"unknown modality {modality!r} (expected one of {', '.join(MODALITIES)})")
    m = d.get("machine")
    machine = None
    if not isinstance(m, dict):
        problems.append("missing 'machine' object (name, sad_mm, energy_mv)")
    else:
        sad = _number(m, "sad_mm", "machine", problems)
        energy = _number(m, "energy_mv", "machine", problems)
        if sad is not None and not (300.0 <= sad <= 2000.0):
            problems.append(f"machine: sad_mm={sad} outside 300..2000 mm")
        if energy is not None and not (0.5 <= energy <= 30.0):
            problems.append(f"machine: energy_mv={energy} outside 0.5..30 MV")
        machine = Machine(str(m.get("name", "unnamed")), sad or 1000.0, energy or 6.0)
    prescriptions = []
    rx = d.get("prescriptions")
    if not isinstance(rx, list) or not rx:
        problems.append("missing 'prescriptions' (a non-empty list)")
        rx = []
    for i, p in enumerate(rx):
        where = f"prescriptions[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("structure"), str):
            problems.append(f"{where}: needs 'structure', 'dose_gy', 'fractions'")
            continue
        dose = _number(p, "dose_gy", where, problems)
        fx = _number(p, "fractions", where, problems, default=1.0)
        if dose is not None and not (0.0 < dose <= 200.0):
            problems.append(f"{where}: dose_gy={dose} outside (0, 200] Gy")
        if fx is not None and (fx < 1 or fx != int(fx)):
            problems.append(f"{where}: fractions={fx} must be a whole number >= 1")
        elif fx is not None and fx > MAX_FRACTIONS:
            problems.append(f"{where}: fractions={fx:g} is more than any course has (at most {MAX_FRACTIONS})")
        elif dose is not None and fx is not None and dose / fx > MAX_DOSE_PER_FRACTION_GY:
            problems.append(f"{where}: {dose:g} Gy in {fx:g} fraction(s) is {dose / fx:.3g} Gy per fraction, "
                            f"more than {MAX_DOSE_PER_FRACTION_GY:g} Gy (is the dose in cGy, or the fractions missing?)")
        prescriptions.append(Prescription(p["structure"], dose or 1.0, int(fx or 1)))
    names = [p.structure for p in prescriptions]
    if len(set(names)) != len(names):
        problems.append("a structure is prescribed twice")
    iso = d.get("isocenter_mm")
    if (not isinstance(iso, list) or len(iso) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in iso)):
        problems.append(f"isocenter_mm must be three finite numbers, got {iso!r}")
        iso = [0.0, 0.0, 0.0]
    beams = []
    for i, b in enumerate(d.get("beams") or []):
        where = f"beams[{i}]"
        if not isinstance(b, dict):
            problems.append(f"{where}: must be an object")
            continue
        beams.append(StaticBeam(_angle(b, "gantry_deg", where, problems) or 0.0,
                                _angle(b, "couch_deg", where, problems, 0.0) or 0.0,
                                _angle(b, "collimator_deg", where, problems, 0.0) or 0.0))
    arcs = []
    for i, a in enumerate(d.get("arcs") or []):
        where = f"arcs[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where}: must be an object")
            continue
        direction = a.get("direction", "CW")
        if direction not in ARC_DIRECTIONS:
            problems.append(f"{where}: direction {direction!r} must be CW or CCW")
        arcs.append(Arc(_angle(a, "gantry_start_deg", where, problems) or 0.0,
                        _angle(a, "gantry_stop_deg", where, problems) or 0.0,
                        direction if direction in ARC_DIRECTIONS else "CW",
                        _angle(a, "couch_deg", where, problems, 0.0) or 0.0,
                        _angle(a, "collimator_deg", where, problems, 0.0) or 0.0))
    patient_id = d.get("patient_id")
    if patient_id is not None and (not isinstance(patient_id, str) or not patient_id.strip()):
        problems.append(f"patient_id must be a non-empty string, got {patient_id!r}")
    if not beams and not arcs:
        problems.append("no beams and no arcs: the plan needs its beam geometry")
    if modality == "VMAT" and not arcs:
        problems.append("modality VMAT needs at least one arc")
    if modality in ("IMRT", "3D-CRT") and not beams:
        problems.append(f"modality {modality} needs static beams")
    if problems:
        raise InvalidPlan(source, problems)
    return TreatmentPlan(site, modality, machine, tuple(prescriptions), tuple(float(v) for v in iso),
                         tuple(beams), tuple(arcs), patient_id.strip() if patient_id else None)


def load_plan(path: Path | str) -> TreatmentPlan:
    return parse_plan(read_json(path), str(path))
