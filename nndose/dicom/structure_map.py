"""map.json: institution ROI names -> the dataset's structure vocabulary.

{"site": "head_neck",
 "structures": {"PTV_7000": {"name": "PTV70", "kind": "target", "dose_gy": 70, "fractions": 35},
                "Parotid L": "LeftParotid",
                "External":  {"name": "Body", "kind": "body"}}}

A string value names an organ at risk. ROI names match after trimming, ignoring case. A target's
dose here is used only where the RTPLAN carries no prescription for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nndose.errors import NndoseError
from nndose.io.json_file import read_json
from nndose.io.raw_dataset import STRUCTURE_KINDS


@dataclass(frozen=True)
class MappedStructure:
    name: str
    kind: str
    dose_gy: float | None = None
    fractions: int | None = None


@dataclass(frozen=True)
class StructureMap:
    structures: dict[str, MappedStructure]   # key: normalized institution name
    site: str | None = None

    def lookup(self, roi_name: str) -> MappedStructure | None:
        return self.structures.get(normalize(roi_name))


def normalize(name: str) -> str:
    return " ".join(name.split()).lower()


def parse_structure_map(d: object, source: str) -> StructureMap:
    if not isinstance(d, dict) or not isinstance(d.get("structures"), dict) or not d["structures"]:
        raise NndoseError(f"{source}: expected {{\"structures\": {{\"<ROI name>\": \"<name>\" or {{\"name\", \"kind\", "
                          f"\"dose_gy\", \"fractions\"}}}}, \"site\": \"...\"}}")
    out: dict[str, MappedStructure] = {}
    for roi, spec in d["structures"].items():
        if isinstance(spec, str):
            spec = {"name": spec, "kind": "oar"}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise NndoseError(f"{source}: entry {roi!r} needs a 'name'")
        kind = spec.get("kind", "oar")
        if kind not in STRUCTURE_KINDS:
            raise NndoseError(f"{source}: entry {roi!r} has kind {kind!r}; expected one of {', '.join(STRUCTURE_KINDS)}")
        dose, fx = spec.get("dose_gy"), spec.get("fractions")
        if dose is not None and (kind != "target" or not isinstance(dose, (int, float)) or not 0 < dose <= 200):
            raise NndoseError(f"{source}: entry {roi!r}: dose_gy must be a number in (0, 200] on a target")
        if fx is not None and (not isinstance(fx, int) or fx < 1):
            raise NndoseError(f"{source}: entry {roi!r}: fractions must be a whole number >= 1")
        key = normalize(roi)
        if key in out:
            raise NndoseError(f"{source}: ROI name {roi!r} appears twice (names match ignoring case)")
        out[key] = MappedStructure(spec["name"], kind, None if dose is None else float(dose), fx)
    kinds: dict[str, str] = {}
    for m in out.values():
        if kinds.setdefault(m.name, m.kind) != m.kind:
            raise NndoseError(f"{source}: structure {m.name!r} is mapped with two kinds")
    site = d.get("site")
    if site is not None and (not isinstance(site, str) or not site):
        raise NndoseError(f"{source}: 'site' must be a non-empty string")
    return StructureMap(out, site)


def load_structure_map(path: Path) -> StructureMap:
    return parse_structure_map(read_json(Path(path)), str(path))
