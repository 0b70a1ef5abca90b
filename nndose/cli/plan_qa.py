"""nndose_plan_qa -i CASES -d ID -c CONFIG -o REPORT [--dicom DICOM_FOLDER --structure_map map.json] [--tolerance_gy 2]
[--tolerance_percent 3] [--flag_metrics Dmean ...] [[--false_alarm_percent 5] [--calibration_cases PLANS] | --no_calibration]"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nndose.cli.common import FOLDS_HELP, OneLineParser, add_model_options, run_cli
from nndose.devices import DEVICE_CHOICES, resolve_device
from nndose.errors import NndoseError
from nndose.inference.predictor import DosePredictor
from nndose.io.layout import CT_FILE, PLAN_FILE, QA_INDEX, TRAIN_DIR, check_folds, model_folder
from nndose.io.raw_dataset import list_cases
from nndose.paths import parse_dataset_id, require_dataset, results_root
from nndose.qa.calibration import DEFAULT_FALSE_ALARM, basis_in_words
from nndose.qa.compare import (DEFAULT_ORGAN_FLAG_METRICS, OAR_METRICS, Tolerance, check_flag_metrics,
                               flag_metrics_in_words, rank_cases)
from nndose.qa.run import plan_qa


def _cases_from_dicom(dicom: Path, structure_map: Path | None, work: Path) -> list[Path]:
    """The DICOM patients converted as training cases (their RTDOSE is the clinical dose) into work."""
    from nndose.dicom.convert import convert_dicom
    from nndose.dicom.structure_map import load_structure_map
    smap = load_structure_map(structure_map) if structure_map else None
    report = convert_dicom(dicom, work / "Dataset000_PlanQA", smap, smap.site if smap else None, test=False)
    for line in report.problems:
        sys.stderr.write(f"nndose_plan_qa: {line}\n")
    if not report.converted:
        raise NndoseError(f"{dicom}: no patient could be converted (the lines above say why)")
    return list_cases(work / "Dataset000_PlanQA", TRAIN_DIR)


def _case_folders(folder: Path, option: str) -> list[Path]:
    """The case folders inside `folder` (refusing a case folder itself)."""
    if not folder.is_dir():
        raise NndoseError(f"{folder}: {option} folder not found")
    if (folder / PLAN_FILE).is_file() or any(folder.glob(f"{CT_FILE}.*")):
        raise NndoseError(f"{folder} is a case folder; {option} takes the folder that holds the case folders")
    cases = list_cases(folder.parent, folder.name)
    if not cases:
        raise NndoseError(f"{folder}: no case folders (expected <case>/ct.nii.gz, dose.nii.gz, structures/, plan.json)")
    return cases


def calibration_line(calibration: dict | None, disabled: bool) -> str:
    """What the flags rest on, in one line."""
    if calibration:
        kinds, source, missing = basis_in_words(calibration)
        return (f"margins of {kinds} learnt on {calibration['cases']} {source} for at most "
                f"{100 * calibration['false_alarm']:g} % false alarms"
                + (f"; {missing}: too few to calibrate, flags from the tolerance and interval alone" if missing else ""))
    if disabled:
        return "flags from the tolerance and the folds' interval alone (--no_calibration)"
    return ("flags from the tolerance and the folds' interval alone: the folds have no validation to calibrate on "
            "(the 'all' fold, too few validation cases, or a model trained before nndose kept them); "
            "--calibration_cases learns them on plans the model never trained on")


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_plan_qa",
                       description="Compare clinical plans with the dose a trained model predicts is achievable, organ by "
                                   "organ, and report the plans that could spare an organ more. Exit status 0 whether or "
                                   "not anything is flagged.")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("-i", type=Path, help="folder of raw cases, each with its clinical dose.nii.gz")
    source.add_argument("--dicom", type=Path, help="folder of DICOM RT exports (CT, RTSTRUCT, RTPLAN, RTDOSE), converted on the fly")
    ap.add_argument("--structure_map", type=Path, help="with --dicom: ROI names -> the model's structure vocabulary")
    ap.add_argument("-o", required=True, type=Path, help="report folder (index.html, qa.json, qa.csv, cases/)")
    add_model_options(ap, folds_help=FOLDS_HELP[:-1] + "; their spread is the interval)")
    ap.add_argument("--tolerance_gy", type=float, default=Tolerance().gy,
                    help="a dose difference counts above this many Gy or --tolerance_percent of the prescription, "
                         "whichever is smaller (default 2)")
    ap.add_argument("--tolerance_percent", type=float, default=Tolerance().percent,
                    help="in %% of the prescription for doses, in percentage points of the organ for V-x (default 3)")
    ap.add_argument("--flag_metrics", nargs="+", default=list(DEFAULT_ORGAN_FLAG_METRICS), metavar="METRIC",
                    help=f"the organ-at-risk metrics an organ is flagged on, of {', '.join(m.name for m in OAR_METRICS)} "
                         f"(default {' '.join(DEFAULT_ORGAN_FLAG_METRICS)}, which sums up the whole DVH); the others are "
                         "shown. Each one added shares the false alarms, so flags on every one get rarer ('Dmean V5Gy' "
                         "helped on one phantom benchmark and not on another, see the README; a V-x at 100 %% cannot "
                         "rise). Targets are flagged on all their metrics")
    ap.add_argument("--false_alarm_percent", type=float,
                    help="margins learnt on the folds' validation cases (or the --calibration_cases) so that at most "
                         "this %% of the structures of plans made like the training plans are flagged (default 5)")
    ap.add_argument("--calibration_cases", type=Path,
                    help="folder of plans (case folders with their dose) the model never trained on, to learn the margins "
                         "from instead of the folds' validation cases (e.g. for the 'all' fold)")
    ap.add_argument("--no_calibration", action="store_true",
                    help="flag on the tolerance and the folds' interval alone, not the model's validated error")
    ap.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    ap.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    args = ap.parse_args(argv)
    if args.structure_map and not args.dicom:
        raise NndoseError("--structure_map goes with --dicom")
    tolerance = Tolerance(args.tolerance_gy, args.tolerance_percent)
    flag_metrics = check_flag_metrics(args.flag_metrics)
    for option, given in (("--calibration_cases", args.calibration_cases), ("--false_alarm_percent", args.false_alarm_percent)):
        if given is not None and args.no_calibration:
            raise NndoseError(f"{option} and --no_calibration exclude each other")
    percent = 100 * DEFAULT_FALSE_ALARM if args.false_alarm_percent is None else args.false_alarm_percent
    if not 0 < percent < 100:
        raise NndoseError(f"--false_alarm_percent {percent} must lie between 0 and 100")
    false_alarm = None if args.no_calibration else percent / 100
    calibration_dirs = _case_folders(args.calibration_cases, "--calibration_cases") if args.calibration_cases else []
    folds = check_folds(args.f) if args.f else None
    results = require_dataset(results_root(), parse_dataset_id(args.d), "trained")
    predictor = DosePredictor(model_folder(results, args.tr, args.p, args.c), args.c, folds=folds,
                              device=resolve_device(args.device), use_tta=not args.disable_tta, checkpoint=args.chk)
    with tempfile.TemporaryDirectory(prefix="nndose_plan_qa.") as work:
        if args.dicom:
            cases = _cases_from_dicom(args.dicom, args.structure_map, Path(work))
        else:
            cases = _case_folders(args.i, "-i")
        qas = plan_qa(cases, args.o, predictor, tolerance, false_alarm=false_alarm, calibration_dirs=calibration_dirs,
                      organ_flag_metrics=flag_metrics)
    flagged = [q for q in qas if q.flagged_organs or q.flagged_targets]
    for q in rank_cases(flagged):
        parts = [f"organs {', '.join(q.flagged_organs)}"] if q.flagged_organs else []
        parts += [f"targets {', '.join(q.flagged_targets)}"] if q.flagged_targets else []
        print(f"{q.case}: flagged {'; '.join(parts)} (sparing left {q.sparing_left_gy:.1f} Gy)")
    print(f"flagged: {flag_metrics_in_words(flag_metrics)}; {calibration_line(qas[0].calibration, args.no_calibration)}")
    print(f"{len(qas)} plan(s) checked with fold(s) {', '.join(predictor.folds)}, {len(flagged)} with flags; "
          f"report: {args.o / QA_INDEX}")


def main(argv=None) -> None:
    run_cli("nndose_plan_qa", _main, argv)
