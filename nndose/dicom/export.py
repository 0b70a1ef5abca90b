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
from nndose.io.atomic import remove_stale_temporaries, replace_path, staging_area
from nndose.io.layout import list_predictions
from nndose.io.volumes import read_volume


def export_dicom(pred_dir: Path, reference_dir: Path, out_dir: Path) -> list[Path]:
    """Write <out>/<case>/RTDOSE_<case>.dcm for every prediction; every input is checked before writing,
    and the files are staged and moved into OUT only when all are written."""
    preds = list_predictions(pred_dir)
    if not preds:
        raise NndoseError(f"{pred_dir}: no <case>.nii.gz predictions")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NndoseError(f"{out_dir}: exists and is not a folder (-o names the output folder)")
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
        if dose.min() < 0:
            raise NndoseError(f"{path}: negative dose ({dose.min():.3g} Gy)")
        plans = [pydicom.dcmread(p, stop_before_pixels=True) for p in patient.files["RTPLAN"]]
        jobs.append((case, dose, grid, ct_header, plans[0] if plans else None))
    written = []
    remove_stale_temporaries(out_dir.parent, out_dir.name)
    with staging_area(out_dir.parent, f"{out_dir.name}.export") as stage:
        for case, dose, grid, ct_header, plan in jobs:
            write_rtdose(stage / case / f"RTDOSE_{case}.dcm", build_rtdose(dose, grid, ct_header, plan))
        for case, *_ in jobs:
            target = out_dir / case / f"RTDOSE_{case}.dcm"
            replace_path(stage / case / target.name, target)
            written.append(target)
    return written
