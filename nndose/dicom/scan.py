"""Find DICOM files under a folder (any nesting) and group them into patients.

A patient group is one (PatientID, StudyInstanceUID): its CT series, RTSTRUCT, RTPLAN and RTDOSE
objects. Files that are not DICOM are ignored; DICOM files that cannot be read are reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from nndose.errors import NndoseError

RT_MODALITIES = ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE")


@dataclass
class PatientFiles:
    patient_id: str
    study_uid: str
    files: dict[str, list[Path]] = field(default_factory=lambda: {m: [] for m in RT_MODALITIES})
    case_name: str = ""


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "patient"


def scan_folder(folder: Path) -> tuple[list[PatientFiles], list[str]]:
    """Patients found (sorted by case name) and problems with unreadable files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NndoseError(f"{folder}: DICOM folder not found")
    groups: dict[tuple[str, str], PatientFiles] = {}
    problems: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        except Exception as e:  # truncated or corrupt DICOM
            problems.append(f"{path}: unreadable DICOM file ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
            continue
        modality = str(ds.get("Modality", ""))
        if not modality:
            problems.append(f"{path}: DICOM file without a Modality (truncated or malformed)")
            continue
        if modality not in RT_MODALITIES:
            continue
        key = (str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", "")))
        groups.setdefault(key, PatientFiles(*key)).files[modality].append(path)
    patients = sorted(groups.values(), key=lambda p: (p.patient_id, p.study_uid))
    by_id: dict[str, list[PatientFiles]] = {}
    for p in patients:
        by_id.setdefault(p.patient_id, []).append(p)
    for pid, studies in by_id.items():
        for i, p in enumerate(studies):
            p.case_name = _sanitize(pid) + (f"_study{i + 1}" if len(studies) > 1 else "")
    return sorted(patients, key=lambda p: p.case_name), problems
