"""Re-plan raw nndose cases with an independent dose engine: pyRadPlan (a Python matRad), photon pencil
beams on its generic 6 MV machine (SAD 1000 mm), fluence optimized by its own optimizer.

Runs in its own environment (pyRadPlan pulls in a large dependency tree and pins numpy and pydantic
apart from nndose's; see benchmarks/requirements-pyradplan.txt); it imports nothing from nndose and
reads and writes the raw case format directly: ct.nii.gz, structures/*.nii.gz, plan.json and the
dataset's dataset.json for which structure is a target, an organ or the body. Per case it replaces
dose.nii.gz (atomically) with pyRadPlan's dose and plan.json's machine with the one computed, so that
a beam channel built from plan.json describes the beams that made the dose.

The plan keeps the case's beam arrangement: static beams at their gantry and couch angles; arcs as
static beams every 20 degrees of gantry along them (one beam per angle where arcs overlap); 3D-CRT as
open fields of uniform fluence over each beam's target projection, the beam weights fitted by
non-negative least squares to the prescriptions. IMRT and VMAT are fluence-optimized: each target to
its prescription (squared deviation; a lower-dose target outside the higher), organs' mean dose down and
their dose under 0.9 x, the body's under 1.05 x the highest prescription. Every plan is normalized so that 95 % of the
highest-dose target gets its prescription (D95 = Rx), and dose outside the body is zero.

python benchmarks/pyradplan_dose.py CASE_DIR [CASE_DIR ...]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ARC_STEP_DEG = 20.0
BIXEL_WIDTH_MM = 7.0
MACHINE = {"name": "pyradplan_generic_6MV", "sad_mm": 1000.0, "energy_mv": 6.0}
# Objective priorities. Objectives average over their structure's voxels, so the body's maximum (1.05 x the
# highest prescription) needs a high priority: at 300, a few lateral entrance regions reached 1.5 x Rx
# (median plan maximum 1.25 x Rx over 100 phantoms); at 10000, 1.2 x Rx, organ mean doses within 0.7 Gy.
TARGET_PRIORITY, OAR_MEAN_PRIORITY, OAR_MAX_PRIORITY, BODY_MAX_PRIORITY = 1000.0, 30.0, 100.0, 10000.0


def gantry_couch_angles(plan: dict) -> tuple[list[float], list[float]]:
    """Static beams as given; arcs as beams every ARC_STEP_DEG at the midpoints of equal sub-arcs."""
    angles = [(float(b["gantry_deg"]), float(b.get("couch_deg", 0.0))) for b in plan.get("beams", [])]
    for arc in plan.get("arcs", []):
        start, stop = float(arc["gantry_start_deg"]), float(arc["gantry_stop_deg"])
        sign = 1.0 if arc.get("direction", "CW") == "CW" else -1.0
        span = ((stop - start) * sign) % 360.0 or 360.0
        n = max(1, int(np.ceil(span / ARC_STEP_DEG - 1e-9)))
        for i in range(n):
            pair = (round((start + sign * (i + 0.5) * span / n) % 360.0, 1), float(arc.get("couch_deg", 0.0)))
            if pair not in angles:
                angles.append(pair)
    return [a[0] for a in angles], [a[1] for a in angles]


def _image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(like)
    return img


def structure_set(case_dir: Path, kinds: dict[str, str], plan: dict):
    """pyRadPlan's CT and structure set, with objectives, and the masks (z, y, x) by name."""
    from pyRadPlan.cst import OAR, ExternalVOI, Target, create_cst
    from pyRadPlan.ct import create_ct
    from pyRadPlan.optimization.objectives import MeanDose, SquaredDeviation, SquaredOverdosing

    ct_img = sitk.Cast(sitk.ReadImage(str(case_dir / "ct.nii.gz")), sitk.sitkFloat32)
    ct = create_ct(cube_hu=ct_img)
    masks = {p.name.removesuffix(".nii.gz"): sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0
             for p in sorted((case_dir / "structures").glob("*.nii.gz"))}
    rx = sorted(((p["dose_gy"], p["structure"]) for p in plan["prescriptions"] if p["structure"] in masks), reverse=True)
    if not rx:
        raise ValueError(f"{case_dir}: no prescribed target has a mask")
    top_gy = rx[0][0]
    vois, covered = [], np.zeros(ct_img.GetSize()[::-1], bool)
    for dose_gy, name in rx:   # a lower-dose target is optimized outside the higher ones
        own = masks[name] & ~covered
        covered |= masks[name]
        vois.append(Target(name=name, ct_image=ct, mask=_image(own.astype(np.uint8), ct_img),
                           objectives=[SquaredDeviation(priority=TARGET_PRIORITY, d_ref=dose_gy)]))
    for name, mask in masks.items():
        kind = kinds.get(name)
        if kind == "oar":
            vois.append(OAR(name=name, ct_image=ct, mask=_image(mask.astype(np.uint8), ct_img),
                            objectives=[MeanDose(priority=OAR_MEAN_PRIORITY, d_ref=0.0),
                                        SquaredOverdosing(priority=OAR_MAX_PRIORITY, d_max=0.9 * top_gy)]))
        elif kind == "body":
            vois.append(ExternalVOI(name=name, ct_image=ct, mask=_image(mask.astype(np.uint8), ct_img),
                                    objectives=[SquaredOverdosing(priority=BODY_MAX_PRIORITY, d_max=1.05 * top_gy)]))
    body = next((masks[n] for n, k in kinds.items() if k == "body" and n in masks), None)
    if body is None:
        raise ValueError(f"{case_dir}: no body mask")
    return ct_img, ct, create_cst(vois, ct=ct), masks, rx, body


def _dose_array(dij, weights: np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(dij.compute_result_ct_grid(weights)["physical_dose"]).astype(np.float64)


def open_field_weights(dij, masks: dict, rx: list) -> np.ndarray:
    """3D-CRT: uniform fluence per beam, beam weights by non-negative least squares on the targets."""
    from scipy.optimize import nnls

    beam_of_bixel = np.asarray(dij.beam_num).ravel().astype(int)
    beams = np.unique(beam_of_bixel)
    per_beam = [_dose_array(dij, (beam_of_bixel == b).astype(float)) for b in beams]
    rows = np.concatenate([np.flatnonzero(masks[name].ravel()) for _, name in rx])
    goal = np.concatenate([np.full(np.count_nonzero(masks[name]), dose_gy) for dose_gy, name in rx])
    a = np.stack([d.ravel()[rows] for d in per_beam], axis=1)
    x, _ = nnls(a, goal)
    return x[np.searchsorted(beams, beam_of_bixel)]


def plan_case(case_dir: Path, kinds: dict[str, str]) -> dict:
    """Compute, normalize and write one case's dose; returns what was done."""
    from pyRadPlan import PhotonPlan, calc_dose_influence, fluence_optimization, generate_stf

    start = time.time()
    plan = json.loads((case_dir / "plan.json").read_text())
    ct_img, ct, cst, masks, rx, body = structure_set(case_dir, kinds, plan)
    gantry, couch = gantry_couch_angles(plan)
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": gantry, "couch_angles": couch, "bixel_width": BIXEL_WIDTH_MM,
                    "iso_center": [list(plan["isocenter_mm"])] * len(gantry)}
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    if plan["modality"] == "3D-CRT":
        weights = open_field_weights(dij, masks, rx)
    else:
        weights = np.asarray(fluence_optimization(ct, cst, stf, dij, pln), dtype=float)
    dose = np.where(body, _dose_array(dij, weights), 0.0)
    top_gy, top = rx[0]
    d95 = np.percentile(dose[masks[top]], 5)
    if not np.isfinite(d95) or d95 <= 0:
        raise ValueError(f"{case_dir}: the plan gives the target no dose")
    dose = (dose * top_gy / d95).astype(np.float32)
    tmp = case_dir / "dose.tmp.nii.gz"
    sitk.WriteImage(_image(dose, ct_img), str(tmp), useCompression=True)
    os.replace(tmp, case_dir / "dose.nii.gz")
    plan["machine"] = dict(MACHINE)
    tmp_plan = case_dir / "plan.json.tmp"
    tmp_plan.write_text(json.dumps(plan, indent=2) + "\n")
    os.replace(tmp_plan, case_dir / "plan.json")
    return {"case": case_dir.name, "beams": len(gantry), "bixels": int(dij.total_num_of_bixels),
            "seconds": round(time.time() - start, 1)}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: pyradplan_dose.py CASE_DIR [CASE_DIR ...]", file=sys.stderr)
        return 2
    kinds_of: dict[Path, dict[str, str]] = {}   # per dataset.json: structure -> target, oar or body
    for arg in argv:
        case_dir = Path(arg)
        dataset_json = case_dir.parent.parent / "dataset.json"
        if not (case_dir / "plan.json").is_file() or not dataset_json.is_file():
            print(f"error: {case_dir} is not a raw case folder (plan.json, ../../dataset.json)", file=sys.stderr)
            return 2
        if dataset_json not in kinds_of:
            kinds_of[dataset_json] = {n: s["kind"] for n, s in json.loads(dataset_json.read_text())["structures"].items()}
        try:
            print(json.dumps(plan_case(case_dir, kinds_of[dataset_json])), flush=True)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
