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

With --degrade_percent P --degraded_into DIR, an IMRT/VMAT case is also planned deliberately worse for
one organ (the truth a plan-QA check must find): of the --candidates organs the case has, the one whose
mean dose rises most when the optimizer leaves it unspared (its objectives dropped, fluence optimized
again on the same dose influence matrix); its sparing is then given up only in part, the fluence a blend
(1 - a) x standard + a x unspared (a deliverable fluence: dose is linear in it), a bisected so that the
organ's mean dose lands P % of the prescription above the standard plan's, normalized like it. The case
is copied to DIR/<case> with that dose. None of the candidates rising that much (an organ in the target,
a 3D-CRT plan): no copy, "degraded": null.

python benchmarks/pyradplan_dose.py [--degrade_percent P --degraded_into DIR --candidates ORGAN,...] CASE_DIR ...
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Case:
    """One raw case as pyRadPlan sees it: the CT (image and pyRadPlan's), the masks (z, y, x) by name, the
    prescriptions [(dose_gy, target)] highest first, and the body mask."""
    ct_img: sitk.Image
    ct: object
    masks: dict[str, np.ndarray]
    rx: list[tuple[float, str]]
    body: np.ndarray


def load_case(case_dir: Path, kinds: dict[str, str], plan: dict) -> Case:
    """The case's CT and masks, read once for every plan made of it."""
    from pyRadPlan.ct import create_ct

    ct_img = sitk.Cast(sitk.ReadImage(str(case_dir / "ct.nii.gz")), sitk.sitkFloat32)
    masks = {p.name.removesuffix(".nii.gz"): sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0
             for p in sorted((case_dir / "structures").glob("*.nii.gz"))}
    rx = sorted(((p["dose_gy"], p["structure"]) for p in plan["prescriptions"] if p["structure"] in masks), reverse=True)
    if not rx:
        raise ValueError(f"{case_dir}: no prescribed target has a mask")
    body = next((masks[n] for n, k in kinds.items() if k == "body" and n in masks), None)
    if body is None:
        raise ValueError(f"{case_dir}: no body mask")
    return Case(ct_img, create_ct(cube_hu=ct_img), masks, rx, body)


def structure_set(case: Case, kinds: dict[str, str], unspared: str | None = None):
    """pyRadPlan's structure set with objectives (none for the organ `unspared`)."""
    from pyRadPlan.cst import OAR, ExternalVOI, Target, create_cst
    from pyRadPlan.optimization.objectives import MeanDose, SquaredDeviation, SquaredOverdosing

    def mask_image(mask: np.ndarray) -> sitk.Image:
        return _image(mask.astype(np.uint8), case.ct_img)
    top_gy = case.rx[0][0]
    vois, covered = [], np.zeros_like(case.body)
    for dose_gy, name in case.rx:   # a lower-dose target is optimized outside the higher ones
        own = case.masks[name] & ~covered
        covered |= case.masks[name]
        vois.append(Target(name=name, ct_image=case.ct, mask=mask_image(own),
                           objectives=[SquaredDeviation(priority=TARGET_PRIORITY, d_ref=dose_gy)]))
    for name, mask in case.masks.items():
        kind = kinds.get(name)
        if kind == "oar":
            objectives = [] if name == unspared else [MeanDose(priority=OAR_MEAN_PRIORITY, d_ref=0.0),
                                                      SquaredOverdosing(priority=OAR_MAX_PRIORITY, d_max=0.9 * top_gy)]
            vois.append(OAR(name=name, ct_image=case.ct, mask=mask_image(mask), objectives=objectives))
        elif kind == "body":
            vois.append(ExternalVOI(name=name, ct_image=case.ct, mask=mask_image(mask),
                                    objectives=[SquaredOverdosing(priority=BODY_MAX_PRIORITY, d_max=1.05 * top_gy)]))
    return create_cst(vois, ct=case.ct)


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


def normalized(dose: np.ndarray, masks: dict, rx: list, case_dir: Path) -> np.ndarray:
    """The dose scaled so that 95 % of the highest-dose target gets its prescription."""
    top_gy, top = rx[0]
    d95 = np.percentile(dose[masks[top]], 5)
    if not np.isfinite(d95) or d95 <= 0:
        raise ValueError(f"{case_dir}: the plan gives the target no dose")
    return dose * top_gy / d95


def blend_for_rise(standard: np.ndarray, unspared: np.ndarray, organ: np.ndarray, masks: dict, rx: list,
                   increase_gy: float, case_dir: Path, steps: int = 30) -> tuple[float, np.ndarray, float]:
    """(a, normalized dose, rise): the blend (1 - a) standard + a unspared of two unnormalized doses whose
    normalized dose raises the organ's mean dose at least increase_gy over the standard plan's, a bisected
    to the smallest such; the unspared dose must raise it that much."""
    base = normalized(standard, masks, rx, case_dir)[organ].mean()
    low, high = 0.0, 1.0
    best = (1.0, normalized(unspared, masks, rx, case_dir))
    for _ in range(steps):
        mid = 0.5 * (low + high)
        dose = normalized((1 - mid) * standard + mid * unspared, masks, rx, case_dir)
        if dose[organ].mean() - base >= increase_gy:
            high, best = mid, (mid, dose)
        else:
            low = mid
    return best[0], best[1], float(best[1][organ].mean() - base)


def _write_case_dose(case_dir: Path, dose: np.ndarray, case: Case, plan: dict) -> None:
    """The dose and plan.json, its machine the one the dose was computed on (each written atomically)."""
    tmp = case_dir / "dose.tmp.nii.gz"
    sitk.WriteImage(_image(dose.astype(np.float32), case.ct_img), str(tmp), useCompression=True)
    os.replace(tmp, case_dir / "dose.nii.gz")
    tmp_plan = case_dir / "plan.json.tmp"
    tmp_plan.write_text(json.dumps({**plan, "machine": dict(MACHINE)}, indent=2) + "\n")
    os.replace(tmp_plan, case_dir / "plan.json")


def degraded_plan(case: Case, kinds: dict[str, str], optimize, standard_raw: np.ndarray, candidates: list[str],
                  increase_gy: float, case_dir: Path) -> tuple[dict, np.ndarray] | None:
    """(what was degraded, the degraded normalized dose) of the candidate organ whose mean dose rises most
    when unspared (`optimize(cst)`: that plan's unnormalized dose), its sparing partly given up so it
    rises increase_gy; None when no candidate rises that much."""
    standard = normalized(standard_raw, case.masks, case.rx, case_dir)
    unspared = {}   # organ -> (its mean-dose rise when unspared, the unspared unnormalized dose)
    for organ in (o for o in candidates if kinds.get(o) == "oar" and o in case.masks):
        dose = optimize(structure_set(case, kinds, unspared=organ))
        mask = case.masks[organ]
        unspared[organ] = (float(normalized(dose, case.masks, case.rx, case_dir)[mask].mean() - standard[mask].mean()), dose)
    organ = max(unspared, key=lambda o: unspared[o][0], default=None)
    if organ is None or unspared[organ][0] < increase_gy:
        return None
    blend, worse, rise = blend_for_rise(standard_raw, unspared[organ][1], case.masks[organ], case.masks, case.rx,
                                        increase_gy, case_dir)
    return {"organ": organ, "unspared_fraction": blend, "increase_gy": rise,
            "increase_percent_of_rx": 100 * rise / case.rx[0][0],
            "rise_when_unspared_gy": {o: r for o, (r, _) in unspared.items()}}, worse


def plan_case(case_dir: Path, kinds: dict[str, str], degrade: argparse.Namespace | None = None) -> dict:
    """Compute, normalize and write one case's dose (and, with `degrade`, its degraded copy); returns what
    was done."""
    from pyRadPlan import PhotonPlan, calc_dose_influence, fluence_optimization, generate_stf

    start = time.time()
    plan = json.loads((case_dir / "plan.json").read_text())
    case = load_case(case_dir, kinds, plan)
    cst = structure_set(case, kinds)
    gantry, couch = gantry_couch_angles(plan)
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": gantry, "couch_angles": couch, "bixel_width": BIXEL_WIDTH_MM,
                    "iso_center": [list(plan["isocenter_mm"])] * len(gantry)}
    stf = generate_stf(case.ct, cst, pln)
    dij = calc_dose_influence(case.ct, cst, stf, pln)

    def dose_of(weights) -> np.ndarray:   # unnormalized, zero outside the body
        return np.where(case.body, _dose_array(dij, np.asarray(weights, dtype=float)), 0.0)
    modulated = plan["modality"] != "3D-CRT"
    raw = dose_of(fluence_optimization(case.ct, cst, stf, dij, pln) if modulated else open_field_weights(dij, case.masks, case.rx))
    record = {"case": case_dir.name, "beams": len(gantry), "bixels": int(dij.total_num_of_bixels)}
    if degrade is not None:
        record["degraded"] = None
        worse = degraded_plan(case, kinds, lambda cst_unspared: dose_of(fluence_optimization(case.ct, cst_unspared, stf, dij, pln)),
                              raw, degrade.candidates if modulated else [], degrade.degrade_percent / 100 * case.rx[0][0],
                              case_dir)
        if worse is not None:
            record["degraded"], dose = worse
            out = Path(degrade.degraded_into) / case_dir.name
            staging = out.with_name(out.name + ".partial")   # nndose's staged_directory is not importable here
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(case_dir, staging)
            _write_case_dose(staging, dose, case, plan)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(staging, out)
    _write_case_dose(case_dir, normalized(raw, case.masks, case.rx, case_dir), case, plan)
    record["seconds"] = round(time.time() - start, 1)
    return record


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, exit 2, like nndose's commands
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    ap = _Parser(description="Re-plan raw nndose cases with pyRadPlan (see the module docstring).")
    ap.add_argument("cases", nargs="+", type=Path, help="raw case folders (plan.json, ../../dataset.json)")
    ap.add_argument("--degrade_percent", type=float, default=None,
                    help="also plan each case worse for one organ, its mean dose this %% of Rx higher")
    ap.add_argument("--degraded_into", type=Path, default=None, help="where the degraded copies go")
    ap.add_argument("--candidates", type=lambda text: [o for o in text.split(",") if o], default=[],
                    help="organs that may be degraded, comma-separated (e.g. Rectum,Bladder)")
    args = ap.parse_args(argv)
    if args.degrade_percent is not None and not (0 < args.degrade_percent <= 100 and args.degraded_into and args.candidates):
        ap.error("--degrade_percent must lie in (0, 100] and come with --degraded_into and --candidates")
    if args.degrade_percent is None and (args.degraded_into or args.candidates):
        ap.error("--degraded_into and --candidates come with --degrade_percent")
    kinds_of: dict[Path, dict[str, str]] = {}   # per dataset.json: structure -> target, oar or body
    for case_dir in args.cases:
        dataset_json = case_dir.parent.parent / "dataset.json"
        if not (case_dir / "plan.json").is_file() or not dataset_json.is_file():
            ap.error(f"{case_dir} is not a raw case folder (plan.json, ../../dataset.json)")
        if dataset_json not in kinds_of:
            kinds_of[dataset_json] = {n: s["kind"] for n, s in json.loads(dataset_json.read_text())["structures"].items()}
        try:
            print(json.dumps(plan_case(case_dir, kinds_of[dataset_json],
                                       args if args.degrade_percent is not None else None)), flush=True)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
