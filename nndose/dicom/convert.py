"""DICOM patients (CT, RTSTRUCT, RTPLAN, RTDOSE) -> an nndose raw dataset.

Each patient is converted on its own into a staging folder; a patient with any problem is skipped
(its problems are returned, one line each) and the others land in casesTr or casesTs.
"""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pydicom

from nndose.dicom.ct_series import read_ct_series
from nndose.dicom.rtdose import resample_dose
from nndose.dicom.rtplan import read_plan
from nndose.dicom.rtstruct import rasterize_roi, read_rois, referenced_frame_of_reference
from nndose.dicom.scan import PatientFiles, scan_folder
from nndose.dicom.structure_map import StructureMap
from nndose.errors import DiskFull, NndoseError
from nndose.io.atomic import remove_stale_temporaries, replace_path, staging_area
from nndose.io.layout import DATASET_JSON, NIFTI, TEST_DIR, TRAIN_DIR
from nndose.io.plan_file import Prescription, TreatmentPlan
from nndose.io.raw_dataset import DatasetInfo, list_cases, load_dataset_json, read_case, write_case, write_dataset_json
from nndose.kill_points import kill_point
from nndose.parallel import map_with_progress
from nndose.preprocessing.body import case_body

SKIPPED_TYPES = ("SUPPORT", "FIXATION", "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "BOLUS",
                 "DOSE_REGION", "CONTROL", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP",
                 "BRACHY_CHNL_SHLD")
TARGET_TYPES = ("PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME")


@dataclass
class PatientResult:
    case: str
    kinds: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _one(paths: list[Path], what: str, choose=None) -> pydicom.Dataset:
    if not paths:
        raise NndoseError(f"no {what}")
    datasets = [pydicom.dcmread(p, stop_before_pixels=what != "RTDOSE") for p in paths]
    chosen = [d for d in datasets if choose(d)] if choose else datasets
    if not chosen:
        raise NndoseError(f"no {what} matches the CT's frame of reference")
    return chosen[0]


def _select_doses(paths: list[Path], frame_uid: str, plan_uid: str) -> list[pydicom.Dataset]:
    doses = [pydicom.dcmread(p) for p in paths]
    for d in doses:
        if str(d.get("FrameOfReferenceUID", "")) != frame_uid:
            raise NndoseError(f"RTDOSE {Path(d.filename).name} is in frame of reference {d.get('FrameOfReferenceUID', '?')}, "
                              f"not the CT's {frame_uid}")
    plan_sums = [d for d in doses if str(d.get("DoseSummationType", "")) == "PLAN"]
    if plan_sums:
        refs = [d for d in plan_sums if any(str(r.ReferencedSOPInstanceUID) == plan_uid
                                            for r in d.get("ReferencedRTPlanSequence", []))]
        return [(refs or plan_sums)[0]]
    return [d for d in doses if str(d.get("DoseSummationType", "")) in ("BEAM", "FRACTION", "")]


def _map_rois(rois, smap: StructureMap | None, doses: dict[int, float], result: PatientResult):
    """ROI number -> (name, kind, dose_gy or None, fractions or None); reports unmapped names."""
    mapped = {}
    for number, roi in rois.items():
        if smap is not None:
            m = smap.lookup(roi.name)
            if m is None:
                if number in doses:
                    result.problems.append(f"prescribed ROI '{roi.name}' ({doses[number]:g} Gy) is not in the structure map")
                else:
                    result.notes.append(f"ROI '{roi.name}' is not in the structure map; left out")
                continue
            mapped[number] = (m.name, m.kind, m.dose_gy, m.fractions)
            continue
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in roi.name).strip("_") or f"ROI{number}"
        if roi.interpreted_type == "EXTERNAL":
            mapped[number] = (name, "body", None, None)
        elif number in doses:
            mapped[number] = (name, "target", None, None)
        elif roi.interpreted_type in TARGET_TYPES or roi.interpreted_type in SKIPPED_TYPES:
            result.notes.append(f"ROI '{roi.name}' ({roi.interpreted_type}) without a prescription; left out")
        else:
            mapped[number] = (name, "oar", None, None)
    return mapped


def convert_patient(patient: PatientFiles, out_case: Path, smap: StructureMap | None, site: str,
                    need_dose: bool) -> PatientResult:
    """Write one patient's case folder; on any problem the folder is removed and the result lists why."""
    result = PatientResult(patient.case_name)
    try:
        _convert(patient, out_case, smap, site, need_dose, result)
    except DiskFull:   # the machine's problem, not the patient's: stop the conversion
        shutil.rmtree(out_case, ignore_errors=True)
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            shutil.rmtree(out_case, ignore_errors=True)
            raise
        result.problems.append(f"cannot read or write ({e.strerror or e})")
    except NndoseError as e:
        result.problems.append(str(e))
    except Exception as e:   # malformed DICOM (missing required attribute, bad value)
        result.problems.append(f"malformed DICOM ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
    if result.problems:
        shutil.rmtree(out_case, ignore_errors=True)
    return result


def _convert(patient, out_case, smap, site, need_dose, result) -> None:
    files = patient.files
    for modality, what in (("CT", "CT slices"), ("RTSTRUCT", "RTSTRUCT"), ("RTPLAN", "RTPLAN")):
        if not files[modality]:
            result.problems.append(f"no {what}")
    if need_dose and not files["RTDOSE"]:
        result.problems.append("no RTDOSE (training cases need the planned dose; use --test for cases without one)")
    if result.problems:
        return
    ct, grid, ct_header = read_ct_series(files["CT"])
    frame_uid = str(ct_header.get("FrameOfReferenceUID", ""))
    rtstruct = _one(files["RTSTRUCT"], "RTSTRUCT", lambda d: referenced_frame_of_reference(d) == frame_uid)
    rtplan = _one(files["RTPLAN"], "RTPLAN")
    geometry = read_plan(rtplan)
    rois = read_rois(rtstruct)
    mapped = _map_rois(rois, smap, geometry.target_doses, result)
    masks: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    rx: dict[str, tuple[float | None, int | None]] = {}
    for number, (name, kind, map_dose, map_fx) in mapped.items():
        mask = rasterize_roi(rtstruct, number, grid)
        if not mask.any():
            if kind == "target":
                result.problems.append(f"target ROI '{rois[number].name}' has no contour on the CT")
            else:
                result.notes.append(f"ROI '{rois[number].name}' has no contour on the CT; left out")
            continue
        masks[name] = masks[name] | mask if name in masks else mask
        kinds[name] = kind
        if kind == "target":
            dose = geometry.target_doses.get(number, map_dose)
            fx = geometry.fractions or map_fx
            if dose is None:
                result.problems.append(f"target {name} ('{rois[number].name}') has no prescription in the RTPLAN or the structure map")
            elif fx is None:
                result.problems.append(f"target {name}: number of fractions neither in the RTPLAN nor the structure map")
            rx[name] = (dose, fx)
    if not any(k == "target" for k in kinds.values()) and not result.problems:
        result.problems.append("no target structure (map a PTV with its prescription)")
    if not grid.contains_point(geometry.isocenter_mm):
        result.problems.append(f"isocenter {tuple(round(v, 1) for v in geometry.isocenter_mm)} lies outside the CT")
    dose = None
    if files["RTDOSE"]:
        doses = _select_doses(files["RTDOSE"], frame_uid, str(rtplan.SOPInstanceUID))
        if not doses:
            result.problems.append("no usable RTDOSE (summation type PLAN, BEAM or FRACTION)")
        else:
            dose = sum(resample_dose(d, grid) for d in doses)
    if result.problems:
        return
    prescriptions = tuple(Prescription(n, float(d), int(f)) for n, (d, f) in rx.items())
    plan = TreatmentPlan(site, geometry.modality, geometry.machine, prescriptions,
                         tuple(round(v, 3) for v in geometry.isocenter_mm), geometry.beams, geometry.arcs,
                         patient_id=patient.patient_id or None)
    write_case(out_case, grid, ct, masks, plan, dose)
    # the checks nndose_verify_dataset makes, so that no case is written that the verifier would reject
    case, problems = read_case(out_case, DatasetInfo("conversion", kinds), require_dose=need_dose)
    result.problems += [p.split("/", 1)[-1] for p in problems]
    if case is not None:
        try:
            case_body(case, next((n for n, k in kinds.items() if k == "body"), None))
        except NndoseError as e:
            result.problems.append(str(e).split(": ", 1)[-1])
    result.kinds = kinds


def _convert_one(patient: PatientFiles, stage: Path, smap, site, need_dose) -> PatientResult:
    return convert_patient(patient, stage / patient.case_name, smap, site, need_dose)


def _vocabulary(existing: dict[str, str], new: dict[str, str]) -> dict[str, str]:
    merged = dict(existing) | new
    order = {"oar": 0, "target": 1, "body": 2}
    return dict(sorted(merged.items(), key=lambda kv: (order[kv[1]], kv[0])))


@dataclass
class ConversionReport:
    converted: list[str]
    skipped: list[str]           # patients left out because of problems
    problems: list[str]          # one line each: '<case or file>: <problem>'
    notes: list[str]             # ROIs left out
    unreadable_files: int


def convert_dicom(input_dir: Path, dataset_dir: Path, smap: StructureMap | None = None, site: str | None = None,
                  test: bool = False, num_processes: int = 1, progress: bool = True) -> ConversionReport:
    """Convert every patient under input_dir into dataset_dir (casesTr, or casesTs with test=True)."""
    patients, problems = scan_folder(input_dir)
    unreadable = len(problems)
    if not patients:
        raise NndoseError(f"{input_dir}: no DICOM CT/RTSTRUCT/RTPLAN/RTDOSE files found"
                          + (f" ({problems[0]})" if problems else ""))
    existing: dict[str, str] = {}
    if (dataset_dir / DATASET_JSON).is_file():
        info = load_dataset_json(dataset_dir)
        if info.extra.get("source") != "dicom":
            raise NndoseError(f"{dataset_dir} exists and was not converted from DICOM; choose another id")
        existing = dict(info.structures)
    elif dataset_dir.exists() and any(p for p in dataset_dir.iterdir() if not p.name.startswith(".")):
        raise NndoseError(f"{dataset_dir} exists without a dataset.json and is not empty; remove it or choose another id")
    site = site or (smap.site if smap and smap.site else "unspecified")
    created = not dataset_dir.exists()
    split = TEST_DIR if test else TRAIN_DIR
    remove_stale_temporaries(dataset_dir)
    try:
        with staging_area(dataset_dir, f"staging_{split}") as stage:
            results = map_with_progress(partial(_convert_one, stage=stage, smap=smap, site=site, need_dose=not test),
                                        patients, num_processes, f"convert DICOM -> {split}", progress, unit="patient")
            converted, skipped, notes = [], [], []
            vocab = dict(existing)
            for r in results:
                clash = [f"{n} is a {k} here but a {vocab[n]} elsewhere" for n, k in r.kinds.items() if vocab.get(n, k) != k]
                r.problems += clash
                problems += [f"{r.case}: {p}" for p in r.problems]
                notes += [f"{r.case}: {n}" for n in r.notes]
                if r.problems:
                    skipped.append(r.case)
                    continue
                vocab = _vocabulary(vocab, r.kinds)
                converted.append(r.case)
            kill_point("convert:cases_staged")
            for case in converted:
                replace_path(stage / case, dataset_dir / split / case)
            if converted:
                write_dataset_json(dataset_dir, DatasetInfo(dataset_dir.name.split("_", 1)[1], vocab, NIFTI,
                                                            len(list_cases(dataset_dir, TRAIN_DIR)),
                                                            "converted from DICOM RT by nndose_convert_dicom",
                                                            {"source": "dicom"}))
    except BaseException:
        if created:
            shutil.rmtree(dataset_dir, ignore_errors=True)
        raise
    if created and not converted:
        shutil.rmtree(dataset_dir, ignore_errors=True)
    return ConversionReport(converted, skipped, problems, notes, unreadable)
