"""Plan QA of clinical plans: each case predicted by every fold of a trained model (the folds' spread is
the uncertainty of the achievable dose), compared with the plan's dose organ by organ, and reported:

REPORT/index.html              the plans ranked by the sparing they leave on the table
REPORT/qa.json, qa.csv         every number and flag of every case
REPORT/cases/<case>/           report.html (flags, DVH overlays with the predicted band, slices), qa.json, qa.csv

The report folder is built aside and moved into place when every case is done.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nndose.errors import NndoseError
from nndose.evaluation.evaluate import dvh_points_without_names, score_case
from nndose.inference.predict_cases import check_dose
from nndose.inference.predictor import DosePredictor
from nndose.io.atomic import remove_stale_temporaries, replace_path, staging_area
from nndose.io.layout import QA_CASE_REPORT, QA_CASES_DIR, QA_INDEX, QA_TABLE_JSON, check_case_name
from nndose.io.raw_dataset import RawCase, check_case_files, load_case, structure_names
from nndose.qa.calibration import DEFAULT_FALSE_ALARM, Calibration, calibrate, fewest_structures, validation_cases
from nndose.qa.compare import (DEFAULT_ORGAN_FLAG_METRICS, KIND_NAMES, CaseQA, Tolerance, check_flag_metrics,
                               compare_case, ensemble_mean)
from nndose.qa.report import write_case_report, write_cohort_report
from nndose.qa.tables import write_case_outputs, write_cohort_outputs


def fold_doses_gy(predictor: DosePredictor, case: RawCase) -> list[np.ndarray]:
    """Each fold's predicted dose in Gy on the case's grid (mirroring as the predictor is set)."""
    data, props = predictor.preprocess(case)
    doses = [predictor.to_gy(case, fold, props) for fold in predictor.predict_folds(data)]
    for dose in doses:
        check_dose(dose, case.name)
    return doses


def model_calibration(predictor: DosePredictor, false_alarm: float | None = DEFAULT_FALSE_ALARM,
                      organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> Calibration | None:
    """The margins learnt on the validation cases of the predictor's folds; None without them (the 'all'
    fold, a model trained before validation kept its DVH points) or when false_alarm is None."""
    if false_alarm is None:
        return None
    cases = validation_cases(predictor.model_dir, predictor.folds)
    return None if cases is None else calibrate(cases, false_alarm, organ_flag_metrics)


def calibration_from_cases(predictor: DosePredictor, case_dirs: list[Path], false_alarm: float = DEFAULT_FALSE_ALARM,
                           progress: bool = True, organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> Calibration | None:
    """Margins learnt on held-out plans the model never trained on (a calibration set, e.g. for the 'all'
    fold): each predicted as plan QA predicts and scored against its planned dose; None when they are
    too few for the false alarm rate."""
    scored = []
    for case_dir in tqdm(case_dirs, desc="calibration", unit="case", disable=not progress):
        case = load_case(case_dir, predictor.info, require_dose=True)
        scored.append(score_case(case, ensemble_mean(fold_doses_gy(predictor, case)), predictor.info))
    calibration = calibrate(dvh_points_without_names(scored), false_alarm, organ_flag_metrics)
    return None if calibration is None else replace(calibration, source="calibration cases")


def qa_case(predictor: DosePredictor, case: RawCase, tolerance: Tolerance, calibration: Calibration | None = None,
            organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> tuple[CaseQA, list[np.ndarray]]:
    """The QA of one case carrying its clinical dose, and the folds' predictions it rests on."""
    if case.dose is None:
        raise NndoseError(f"{case.name}: no dose.nii.gz: plan QA compares the clinical plan's dose with the prediction")
    folds = fold_doses_gy(predictor, case)
    prescriptions = {p.structure: p.dose_gy for p in case.plan.prescriptions}
    return compare_case(case.name, case.dose, folds, case.structures, predictor.info.structures, prescriptions,
                        case.grid.voxel_volume_mm3, tolerance, calibration, organ_flag_metrics), folds


def _check_report_folder(out_dir: Path, inputs: list[Path]) -> None:
    """The report folder: a folder (or nothing yet), a report if not empty, and outside the folders
    the `inputs` (case folders) lie in, where a later run would read it as a case."""
    holders = sorted({Path(c).resolve().parent for c in inputs})
    inside = next((h for h in holders if out_dir.resolve().is_relative_to(h)), None)
    if inside is not None:
        raise NndoseError(f"{out_dir} lies inside {inside}, a folder of input cases, where it would be read as a case; "
                          "write the report elsewhere")
    if out_dir.exists() and not out_dir.is_dir():
        raise NndoseError(f"{out_dir}: exists and is not a folder (-o names the report folder)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / QA_TABLE_JSON).is_file():
        raise NndoseError(f"{out_dir} exists and is not a plan QA report; choose another -o")


def check_qa_inputs(case_dirs: list[Path], predictor: DosePredictor, what: str = "") -> list[str]:
    """The quick checks, before any prediction: unique case names, every case's files; returns the names.
    `what` names the cases in messages (e.g. "calibration plan ")."""
    names = [check_case_name(Path(c).name) for c in case_dirs]
    if not names:
        raise NndoseError(f"no {what or 'case '}to check")
    if len(set(names)) != len(names):
        raise NndoseError(f"two {what or 'input '}cases share a name; every case needs its own")
    for c in case_dirs:
        problems = check_case_files(c, predictor.info, require_dose=True)
        if problems:
            raise NndoseError(what + problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return names


def _structures_by_kind(case_dirs: list[Path], predictor: DosePredictor) -> dict[str, int]:
    """How many organs at risk and targets the case folders hold (mask files, no voxels read)."""
    kinds = [predictor.info.structures[n] for c in case_dirs for n in structure_names(c, predictor.info)]
    return {KIND_NAMES[k]: kinds.count(k) for k in KIND_NAMES if k in kinds}


def plan_qa(case_dirs: list[Path], out_dir: Path, predictor: DosePredictor, tolerance: Tolerance = Tolerance(),
            progress: bool = True, false_alarm: float | None = DEFAULT_FALSE_ALARM,
            calibration_dirs: list[Path] = (), organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> list[CaseQA]:
    """QA of every case folder (each with its clinical dose.nii.gz) into the report folder out_dir. Organs
    are flagged on `organ_flag_metrics` (qa.compare), targets on all their metrics. The flags are
    calibrated for `false_alarm` on `calibration_dirs` (plans the model never trained on) when given,
    else on the folds' validation cases (false_alarm None: tolerance and interval only). Every input is
    checked before the first prediction."""
    out_dir = Path(out_dir)
    organ_flag_metrics = check_flag_metrics(organ_flag_metrics)
    _check_report_folder(out_dir, [*case_dirs, *calibration_dirs])
    names = check_qa_inputs(case_dirs, predictor)
    if calibration_dirs:
        if false_alarm is None:
            raise NndoseError("calibration plans given with calibration turned off")
        both = sorted({Path(c).name for c in calibration_dirs} & set(names))
        if both:
            raise NndoseError(f"{both[0]} is both a plan to check and a calibration plan; calibrate on other plans")
        check_qa_inputs(calibration_dirs, predictor, what="calibration plan ")
        too_few = f"{len(calibration_dirs)} calibration plans are too few to calibrate {100 * false_alarm:g} % false alarms"
        counts, fewest = _structures_by_kind(calibration_dirs, predictor), fewest_structures(false_alarm)
        if max(counts.values(), default=0) < fewest:   # known before predicting them
            held = " and ".join(f"{n} {k}" for k, n in counts.items()) or "no structure to check"
            raise NndoseError(f"{too_few}: they hold {held}, and a kind needs at least {fewest}")
        calibration = calibration_from_cases(predictor, calibration_dirs, false_alarm, progress, organ_flag_metrics)
        if calibration is None:
            raise NndoseError(too_few)
    else:
        calibration = model_calibration(predictor, false_alarm, organ_flag_metrics)
    remove_stale_temporaries(out_dir.parent, out_dir.name)
    results = []
    with staging_area(out_dir.parent, f"{out_dir.name}.qa") as stage:
        for case_dir in tqdm(case_dirs, desc="plan QA", unit="case", disable=not progress):
            case = load_case(case_dir, predictor.info, require_dose=True)
            qa, folds = qa_case(predictor, case, tolerance, calibration, organ_flag_metrics)
            folder = stage / QA_CASES_DIR / case.name
            write_case_outputs(qa, folder)
            write_case_report(qa, case.dose, folds, case.structures, case.ct, folder / QA_CASE_REPORT)
            results.append(qa)
        write_cohort_outputs(results, stage, None if calibration is None else calibration.to_json())
        write_cohort_report(results, stage / QA_INDEX, {n: f"{QA_CASES_DIR}/{n}/{QA_CASE_REPORT}" for n in names})
        replace_path(stage, out_dir)
    return results
