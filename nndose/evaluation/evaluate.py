"""Evaluate a folder of predictions against raw reference cases; write summary.json."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from nndose.errors import NndoseError
from nndose.evaluation.metrics import case_metrics
from nndose.io.layout import DOSE_FILE, list_predictions
from nndose.io.raw_dataset import DatasetInfo, RawCase, list_cases, load_case, load_dataset_json
from nndose.io.volumes import read_volume
from nndose.preprocessing.body import case_body


def _mean_std(values) -> dict:
    a = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)} if a.size else {"mean": None, "std": None, "n": 0}


def evaluate_case(case_dir: Path, prediction_path: Path, info: DatasetInfo) -> dict:
    case = load_case(case_dir, info, require_dose=True)
    pred, grid = read_volume(prediction_path)
    if not grid.same_as(case.grid):
        raise NndoseError(f"{prediction_path}: grid {grid.describe()} differs from the reference's {case.grid.describe()}")
    if not np.all(np.isfinite(pred)):
        raise NndoseError(f"{prediction_path}: prediction holds NaN or infinite values")
    return score_case(case, pred, info)


def score_case(case: RawCase, pred: np.ndarray, info: DatasetInfo) -> dict:
    """Every metric of a prediction (Gy, on the case's grid) against the case's planned dose."""
    body = case_body(case, info.body)
    rx = {p.structure: p.dose_gy for p in case.plan.prescriptions}
    reference = case.dose.astype(np.float64)
    quantum = info.extra.get("dose_quantum_gy")
    if quantum:  # float32 storage moved the reference off its original grid of values; restore it exactly
        reference = np.round(reference / quantum) * quantum
    m = case_metrics(reference, pred.astype(np.float64), case.structures, info.structures, info.body, body, case.grid.voxel_volume_mm3, rx)
    m.update({"case": case.name, "site": case.plan.site, "modality": case.plan.modality,
              "reference_dose_gy": case.plan.reference_dose_gy})
    return m


def dvh_points_without_names(scored: list[dict]) -> list[dict]:
    """Scored cases (score_case) reduced to their structures' planned and predicted DVH points, site and
    reference dose, in a random order and without the cases' names: what plan QA calibrates on."""
    out = [{"site": c["site"], "reference_dose_gy": c["reference_dose_gy"],
            "structures": {n: {"kind": s["kind"], "planned": s["reference"], "predicted": s["prediction"]}
                           for n, s in c["structures"].items()}} for c in scored]
    np.random.default_rng().shuffle(out)
    return out


def aggregate(cases: list[dict]) -> dict:
    errors = [e for c in cases for s in c["openkbp_dvh_errors"].values() for e in s.values()]
    out = {"dose_score": float(np.mean([c["dose_error_openkbp"] for c in cases])),
           "dvh_score": float(np.mean(errors)) if errors else None,
           "mae_body_gy": _mean_std(c["mae_body_gy"] for c in cases),
           "dose_error_openkbp": _mean_std(c["dose_error_openkbp"] for c in cases),
           "isodose_dice": {lv: _mean_std(c["isodose_dice"][lv] for c in cases) for lv in cases[0]["isodose_dice"]},
           "structures": {}}
    names = sorted({n for c in cases for n in c["structures"]})
    for n in names:
        entries = [c["structures"][n] for c in cases if n in c["structures"]]
        points = sorted({k for e in entries for k in e["prediction"]})
        out["structures"][n] = {
            "mae_gy": _mean_std(e["mae_gy"] for e in entries),
            "abs_error": {k: _mean_std(abs(e["prediction"][k] - e["reference"][k]) for e in entries
                                       if k in e["prediction"]) for k in points}}
    return out


def breakdown(cases: list[dict]) -> dict:
    """The scores per site, modality and reference (highest prescription) dose."""
    out = {}
    for key in ("site", "modality", "reference_dose_gy"):
        groups: dict[str, list[dict]] = {}
        for c in cases:
            groups.setdefault(str(c[key]), []).append(c)
        out[key] = {g: {k: v for k, v in aggregate(cs).items() if k in ("dose_score", "dvh_score", "mae_body_gy")}
                    | {"n": len(cs)} for g, cs in sorted(groups.items())}
    return out


def evaluate_folder(reference_dir: Path, prediction_dir: Path, info: DatasetInfo | None = None,
                    allow_missing: bool = False) -> dict:
    """Score every prediction against its reference case. A reference case (with a planned dose) that
    has no prediction is an error unless allow_missing, so a score never silently covers fewer cases."""
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    if not reference_dir.is_dir():
        raise NndoseError(f"{reference_dir}: reference folder not found")
    info = info or load_dataset_json(reference_dir.parent)
    preds = list_predictions(prediction_dir)
    if not preds:
        raise NndoseError(f"{prediction_dir}: no <case>.nii.gz predictions")
    for name, p in preds.items():
        if not (reference_dir / name).is_dir():
            raise NndoseError(f"{p}: no reference case {name} in {reference_dir}")
    references = [c.name for c in list_cases(reference_dir.parent, reference_dir.name)
                  if (c / f"{DOSE_FILE}{info.file_ending}").is_file()]
    missing = [c for c in references if c not in preds]
    if missing and not allow_missing:
        raise NndoseError(f"{prediction_dir}: {len(missing)} of {len(references)} reference case(s) have no prediction "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); predict them or pass --allow_missing")
    cases = [evaluate_case(reference_dir / name, p, info) for name, p in preds.items()]
    return {"aggregate": aggregate(cases), "breakdown": breakdown(cases), "cases": cases,
            "missing_predictions": missing}


def compare(summary_a: dict, summary_b: dict) -> dict:
    """Paired Wilcoxon signed-rank tests (per case) of dose error and DVH error, a vs b."""
    a = {c["case"]: c for c in summary_a["cases"]}
    b = {c["case"]: c for c in summary_b["cases"]}
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise NndoseError("--compare needs at least two cases predicted in both folders")
    out = {"n": len(common)}
    for key in ("dose_error_openkbp", "dvh_error_openkbp", "mae_body_gy"):
        x = np.array([a[c][key] for c in common])
        y = np.array([b[c][key] for c in common])
        test = stats.wilcoxon(x, y) if np.any(x != y) else None
        out[key] = {"mean_this": float(x.mean()), "mean_other": float(y.mean()),
                    "wilcoxon_p": float(test.pvalue) if test is not None else 1.0}
    return out
