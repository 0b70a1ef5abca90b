"""One raw case -> input channels, normalized dose target and properties, as the plan prescribes."""
from __future__ import annotations

import numpy as np

from nndose.io.raw_dataset import RawCase
from nndose.plans import Configuration, Plans
from nndose.preprocessing.body import body_source, case_body
from nndose.preprocessing.channels import build_channels
from nndose.preprocessing.resampling import bbox_with_margin, crop_grid, grid_with_spacing, resample_mask, resample_to_grid


def preprocess_case(case: RawCase, plans: Plans, conf: Configuration) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(channels (C, Z, Y, X) of conf.stored_channels, dose / reference dose (Z, Y, X) or None, properties)."""
    body = case_body(case, plans.body)
    lo, hi = bbox_with_margin(body, case.grid, plans.crop_margin_mm)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    cgrid = crop_grid(case.grid, lo, hi)
    rgrid = grid_with_spacing(cgrid, conf.spacing_zyx)
    ct = resample_to_grid(case.ct[crop], cgrid, rgrid, order=1)
    structures = {n: resample_mask(m[crop], cgrid, rgrid) for n, m in case.structures.items() if n != plans.body}
    rbody = resample_mask(body[crop], cgrid, rgrid)
    channels = build_channels(conf.stored_channels, ct, rgrid, structures, rbody, case.plan, plans.targets,
                              plans.ct_normalization, plans.beam_channels)
    ref = case.plan.reference_dose_gy
    target = None
    if case.dose is not None:
        target = np.where(rbody, resample_to_grid(case.dose[crop], cgrid, rgrid, order=1), 0.0).astype(np.float32) / ref
    props = {"case": case.name, "patient_id": case.plan.patient_id or case.name,
             "original_grid": case.grid.to_json(), "crop_start_zyx": lo, "crop_stop_zyx": hi,
             "cropped_grid": cgrid.to_json(), "preprocessed_grid": rgrid.to_json(),
             "reference_dose_gy": ref, "site": case.plan.site, "modality": case.plan.modality,
             "prescriptions": [{"structure": p.structure, "dose_gy": p.dose_gy, "fractions": p.fractions}
                               for p in case.plan.prescriptions],
             "structures_present": sorted(case.structures), "body_source": body_source(case.structures, plans.body),
             "channels": list(conf.stored_channels), "has_dose": target is not None}
    return channels, target, props
