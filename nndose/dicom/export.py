"""Predicted doses (<case>.nii.gz on the CT grid) -> RTDOSE files next to the patient's DICOM.

The case name of each prediction is matched to the patient found in the reference DICOM folder
the way nndose_convert_dicom names cases; the RTDOSE takes the CT's identity and frame of
reference and references the patient's RTPLAN.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from nndose.dicom.ct_series import read_ct_series
from nndose.dicom.rtdose import build_rtdose, write_rtdose
from nndose.dicom.scan import scan_folder
from nndose.errors import NndoseError
from nndose.io.volumes import read_volume


def prediction_files(pred_dir: Path) -> dict[str, Path]:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise NndoseError(f"{pred_dir}: prediction folder not found")
    preds = {p.name[: -len(".nii.gz")]: p for p in sorted(pred_dir.glob("*.nii.gz"))
             if not p.name.startswith(".") and not p.name.endswith("_spread.nii.gz")}
    if not preds:
        raise NndoseError(f"{pred_dir}: no <case>.nii.gz predictions")
    return preds


def export_dicom(pred_dir: Path, reference_dir: Path, out_dir: Path, progress_cb=None) -> list[Path]:
    """Write <out>/<case>/RTDOSE_<case>.dcm for every prediction; every input is checked before writing."""
    preds = prediction_files(pred_dir)
    patients, problems = scan_folder(reference_dir)
    by_case = {p.case_name: p for p in patients}
    missing = [c for c in preds if c not in by_case]
    if missing:
        raise NndoseError(f"{reference_dir}: no DICOM patient for prediction(s) {', '.join(missing[:5])}"
                          + (f" ({problems[0]})" if problems else ""))
    jobs = []
    for case, path in preds.items():
        patient = by_case[case]
        if not patient.files["CT"]:
            raise NndoseError(f"{case}: the reference folder has no CT series for this patient")
        try:
            _, grid, ct_header = read_ct_series(patient.files["CT"])
        except NndoseError as e:
            raise NndoseError(f"{case}: {e}") from None
        dose, pred_grid = read_volume(path)
        if not pred_grid.same_as(grid):
            raise NndoseError(f"{path}: grid {pred_grid.describe()} differs from the CT's {grid.describe()}")
        if not np.all(np.isfinite(dose)):
            raise NndoseError(f"{path}: prediction holds NaN or infinite values")
        plans = [pydicom.dcmread(p, stop_before_pixels=True) for p in patient.files["RTPLAN"]]
        jobs.append((case, dose, grid, ct_header, plans[0] if plans else None))
    written = []
    for case, dose, grid, ct_header, plan in jobs:
        target = Path(out_dir) / case / f"RTDOSE_{case}.dcm"
        write_rtdose(target, build_rtdose(dose, grid, ct_header, plan))
        written.append(target)
        if progress_cb:
            progress_cb()
    return written
