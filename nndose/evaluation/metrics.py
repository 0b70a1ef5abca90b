"""Dose-prediction metrics: the OpenKBP scores exactly as the challenge computes them, and the field's
DVH points, HI, CI, isodose Dice and per-structure MAE.

OpenKBP conventions (open-kbp, provided_code): the dose error of a case is the sum of |reference -
prediction| over *all* voxels divided by the number of possible-dose-mask (body) voxels; the DVH
points are D_0.1cc and mean dose for organs and D99, D95, D1 for targets, with np.percentile's
linear interpolation, D_0.1cc at percentile 100 - n/N*100 where n = max(1, round(100 / voxel mm^3))
voxels; the DVH score is the mean absolute difference over every (case, structure, point) entry.
"""
from __future__ import annotations

import numpy as np

OAR_POINTS = ("D_0.1_cc", "mean")
TARGET_POINTS = ("D_99", "D_95", "D_1")
ISODOSE_LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 11))
V_LEVELS_GY = (5, 20, 30, 40)   # the organs' V-x points: % of the organ at x Gy or more


def openkbp_dose_error(reference: np.ndarray, prediction: np.ndarray, body: np.ndarray) -> float:
    return float(np.sum(np.abs(reference.astype(np.float64) - prediction.astype(np.float64))) / np.sum(body))


def d_tenth_cc(dose: np.ndarray, voxel_mm3: float) -> float:
    n = max(1.0, float(np.round(100.0 / voxel_mm3)))
    q = 100.0 - n / dose.size * 100.0
    return float(np.percentile(dose, min(100.0, max(0.0, q))))


def openkbp_dvh_points(dose_in_structure: np.ndarray, kind: str, voxel_mm3: float) -> dict[str, float]:
    d = dose_in_structure.astype(np.float64)
    if kind == "target":
        return {"D_99": float(np.percentile(d, 1)), "D_95": float(np.percentile(d, 5)), "D_1": float(np.percentile(d, 99))}
    return {"D_0.1_cc": d_tenth_cc(d, voxel_mm3), "mean": float(d.mean())}


def dvh_points(dose_in_structure: np.ndarray, kind: str, voxel_mm3: float) -> dict[str, float]:
    """D99, D98, D95, D50, D2, D1, Dmax, Dmean, D0.1cc for every structure; V5/V20/V30/V40 (%) for organs."""
    d = dose_in_structure.astype(np.float64)
    out = {f"D{p}": float(np.percentile(d, 100 - p)) for p in (99, 98, 95, 50, 2, 1)}
    out.update({"Dmax": float(d.max()), "Dmean": float(d.mean()), "D0.1cc": d_tenth_cc(d, voxel_mm3)})
    if kind == "oar":
        out.update({f"V{v}Gy": float(np.mean(d >= v) * 100) for v in V_LEVELS_GY})
    return out


def homogeneity_index(dose_in_target: np.ndarray) -> float:
    """ICRU 83: (D2 - D98) / D50."""
    d2, d50, d98 = np.percentile(dose_in_target, [98, 50, 2])
    return float((d2 - d98) / d50) if d50 > 0 else float("nan")


def conformity_index(dose: np.ndarray, target: np.ndarray, prescription_gy: float, body: np.ndarray) -> float:
    """Paddick: (TV_PIV)^2 / (TV * PIV), PIV = body volume receiving at least the prescription."""
    piv = (dose >= prescription_gy) & body
    tv_piv = np.count_nonzero(piv & target)
    denominator = np.count_nonzero(target) * np.count_nonzero(piv)
    return float(tv_piv ** 2 / denominator) if denominator else 0.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / total) if total else 1.0


def isodose_dice(reference: np.ndarray, prediction: np.ndarray, reference_dose_gy: float, body: np.ndarray,
                 levels=ISODOSE_LEVELS) -> dict[str, float]:
    return {f"{int(round(lv * 100))}%": dice((reference >= lv * reference_dose_gy) & body,
                                             (prediction >= lv * reference_dose_gy) & body) for lv in levels}


def case_metrics(reference: np.ndarray, prediction: np.ndarray, structures: dict[str, np.ndarray],
                 kinds: dict[str, str], body_name: str | None, body: np.ndarray, voxel_mm3: float,
                 prescriptions: dict[str, float]) -> dict:
    """Every metric of one case (doses in Gy on the case's own grid)."""
    ref_dose = max(prescriptions.values())
    out = {"dose_error_openkbp": openkbp_dose_error(reference, prediction, body),
           "mae_body_gy": float(np.abs(reference - prediction)[body].mean()),
           "isodose_dice": isodose_dice(reference, prediction, ref_dose, body),
           "structures": {}, "openkbp_dvh_errors": {}}
    for name, mask in structures.items():
        kind = kinds.get(name)
        if name == body_name or kind not in ("target", "oar") or not mask.any():
            continue
        r, p = reference[mask], prediction[mask]
        s = {"kind": kind, "mae_gy": float(np.abs(r - p).mean()),
             "reference": dvh_points(r, kind, voxel_mm3), "prediction": dvh_points(p, kind, voxel_mm3)}
        if kind == "target" and name in prescriptions:
            s["reference"]["HI"], s["prediction"]["HI"] = homogeneity_index(r), homogeneity_index(p)
            s["reference"]["CI"] = conformity_index(reference, mask, prescriptions[name], body)
            s["prediction"]["CI"] = conformity_index(prediction, mask, prescriptions[name], body)
        out["structures"][name] = s
        ro, po = openkbp_dvh_points(r, kind, voxel_mm3), openkbp_dvh_points(p, kind, voxel_mm3)
        out["openkbp_dvh_errors"][name] = {k: abs(ro[k] - po[k]) for k in ro}
    errors = [e for s in out["openkbp_dvh_errors"].values() for e in s.values()]
    out["dvh_error_openkbp"] = float(np.mean(errors)) if errors else float("nan")
    return out
