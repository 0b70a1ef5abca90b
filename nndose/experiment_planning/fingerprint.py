"""Dataset fingerprint: what the planner needs to know about a raw dataset, as readable JSON."""
from __future__ import annotations

import zlib
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.geometry.beams import directions_by_delivery
from nndose.io.layout import TRAIN_DIR
from nndose.io.raw_dataset import DatasetInfo, list_cases, load_case, load_dataset_json
from nndose.parallel import map_with_progress
from nndose.preprocessing.body import case_body
from nndose.preprocessing.resampling import bbox_with_margin

CT_SAMPLES_PER_CASE = 10000


def case_fingerprint(case_dir: Path, info: DatasetInfo, crop_margin_mm: float) -> dict:
    case = load_case(case_dir, info, require_dose=True)
    body = case_body(case, info.body)
    lo, hi = bbox_with_margin(body, case.grid, crop_margin_mm)
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    hu = case.ct[body]
    sample = rng.choice(hu, min(CT_SAMPLES_PER_CASE, hu.size), replace=False) if hu.size else hu
    voxel_cc = case.grid.voxel_volume_mm3 / 1000.0
    p = case.plan
    return {"case": case.name, "patient_id": case.plan.patient_id or case.name, "spacing_zyx": case.grid.spacing_zyx.tolist(), "shape_zyx": list(case.grid.shape_zyx),
            "cropped_shape_zyx": [b - a for a, b in zip(lo, hi)],
            "ct_sample_hu": sample.astype(float).round(1).tolist(),
            "dose_max_gy": float(case.dose.max()), "reference_dose_gy": p.reference_dose_gy,
            "prescriptions": [{"structure": r.structure, "dose_gy": r.dose_gy, "fractions": r.fractions} for r in p.prescriptions],
            "site": p.site, "modality": p.modality, "machine": p.machine.name, "sad_mm": p.machine.sad_mm,
            "energy_mv": p.machine.energy_mv, "num_beams": len(p.beams), "num_arcs": len(p.arcs),
            "gantry_deg": [b.gantry_deg for b in p.beams],
            "arcs": [[a.gantry_start_deg, a.gantry_stop_deg, a.direction] for a in p.arcs],
            "non_coplanar": p.non_coplanar,
            "deliveries": [d for d, directions in directions_by_delivery(p).items() if directions],
            "structure_volumes_cc": {n: float(m.sum() * voxel_cc) for n, m in case.structures.items()}}


def _stats(values) -> dict:
    a = np.asarray(values, dtype=float)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def aggregate(cases: list[dict], info: DatasetInfo) -> dict:
    hu = np.concatenate([np.asarray(c.pop("ct_sample_hu"), dtype=float) for c in cases])
    rx = [r["dose_gy"] for c in cases for r in c["prescriptions"]]
    n = len(cases)
    structures = {}
    for name, kind in info.structures.items():
        vols = [c["structure_volumes_cc"][name] for c in cases if name in c["structure_volumes_cc"]]
        structures[name] = {"kind": kind, "frequency": len(vols) / n, **({"volume_cc": _stats(vols)} if vols else {})}
    return {
        "num_cases": n,
        "spacings_zyx": [c["spacing_zyx"] for c in cases], "shapes_zyx": [c["shape_zyx"] for c in cases],
        "cropped_shapes_zyx": [c["cropped_shape_zyx"] for c in cases],
        "median_spacing_zyx": np.median([c["spacing_zyx"] for c in cases], axis=0).tolist(),
        "ct_in_body": {"mean": float(hu.mean()), "std": float(hu.std()), "min": float(hu.min()), "max": float(hu.max()),
                       "percentile_00_5": float(np.percentile(hu, 0.5)), "percentile_99_5": float(np.percentile(hu, 99.5))},
        "prescriptions": {"levels_gy": sorted(set(rx)), "range_gy": [min(rx), max(rx)],
                          "reference_doses_gy": sorted({c["reference_dose_gy"] for c in cases}),
                          "simultaneous_boost_cases": sum(len(c["prescriptions"]) > 1 for c in cases)},
        "sites": dict(Counter(c["site"] for c in cases)), "modalities": dict(Counter(c["modality"] for c in cases)),
        "machines": dict(Counter(c["machine"] for c in cases)),
        "sad_mm": sorted({c["sad_mm"] for c in cases}), "energies_mv": sorted({c["energy_mv"] for c in cases}),
        "non_coplanar_cases": sum(c["non_coplanar"] for c in cases),
        "structures": structures,
        "cases": cases,
    }


def compute_fingerprint(dataset_dir: Path, crop_margin_mm: float, num_processes: int = 2, progress: bool = True) -> dict:
    info = load_dataset_json(dataset_dir)
    case_dirs = list_cases(dataset_dir, TRAIN_DIR)
    if not case_dirs:
        raise NndoseError(f"{dataset_dir}/{TRAIN_DIR}: no training cases")
    cases = map_with_progress(partial(case_fingerprint, info=info, crop_margin_mm=crop_margin_mm), case_dirs,
                              num_processes, "fingerprint", progress)
    return {"dataset": Path(dataset_dir).name, "crop_margin_mm": crop_margin_mm, **aggregate(cases, info)}
