"""Where everything lives: the one owner of nndose's file and folder names.

Raw dataset    DatasetXXX_Name/{dataset.json, casesTr/<case>/, casesTs/<case>/}, a case holding
               ct.nii.gz, dose.nii.gz, structures/<name>.nii.gz and plan.json.
Preprocessed   DatasetXXX_Name/{nndosePlans.json, dataset_fingerprint.json, dataset.json,
               splits_final.json, <data_identifier>/<case>.b2nd|_dose.b2nd|.json}.
Trained model  DatasetXXX_Name/<trainer>__<plans>__<config>/{plans.json, dataset.json,
               dataset_fingerprint.json, oof_predictions/, fold_<k>/checkpoint_*.pth}.
Predictions    OUT/<case>.nii.gz (dose in Gy) and OUT/spread/<case>.nii.gz (spread across folds):
               spread maps live in their own folder, so no case name can be mistaken for one.
Plan QA        REPORT/{index.html, qa.json, qa.csv, cases/<case>/{report.html, qa.json, qa.csv}}.
"""
from __future__ import annotations

import re
from pathlib import Path

from nndose.errors import NndoseError

# ----- raw dataset ------------------------------------------------------------------------------
DATASET_JSON = "dataset.json"
TRAIN_DIR, TEST_DIR = "casesTr", "casesTs"
CT_FILE, DOSE_FILE, PLAN_FILE, STRUCTURES_DIR = "ct", "dose", "plan.json", "structures"
NIFTI = ".nii.gz"
DEGRADED_PLANS_FILE = "degraded_plans.json"   # phantoms: which test plans were made worse for an organ

# ----- preprocessed dataset ---------------------------------------------------------------------
PLANS_FILE = "nndosePlans.json"
FINGERPRINT_FILE = "dataset_fingerprint.json"
SPLITS_FILE = "splits_final.json"

# ----- trained models ---------------------------------------------------------------------------
MODEL_PLANS_FILE = "plans.json"
MODEL_FILES = (MODEL_PLANS_FILE, DATASET_JSON, FINGERPRINT_FILE)   # what inference needs beside the folds
FOLDS = ("0", "1", "2", "3", "4")
ALL_FOLD = "all"
CHECKPOINT_FINAL, CHECKPOINT_BEST, CHECKPOINT_LATEST = "checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth"
CHECKPOINTS = (CHECKPOINT_FINAL, CHECKPOINT_BEST, CHECKPOINT_LATEST)
OOF_DIR = "oof_predictions"   # each case's first-stage prediction by the fold that did not train on it
VALIDATION_DIR = "validation"
SUMMARY_FILE = "summary.json"   # the scores of a prediction folder (nndose_evaluate, a fold's validation)
# a fold's validation cases' planned and predicted DVH points, without case names: what plan QA
# calibrates its flags on (the model's own out-of-fold error); shared in model zips
VALIDATION_DVH_FILE = "dvh_points.json"
TRAINING_LOG = "training_log.txt"
PROGRESS_PLOT = "progress.png"
LOCK_FILE = ".training.lock"   # held by the process training a fold
FINETUNE_FILE = "finetune.json"   # the recipe a fine-tuned model was made with

# ----- predictions ------------------------------------------------------------------------------
SPREAD_DIR = "spread"

# ----- plan QA reports --------------------------------------------------------------------------
QA_INDEX = "index.html"        # the cohort page, ranking the plans
QA_TABLE_JSON, QA_TABLE_CSV = "qa.json", "qa.csv"   # every number and flag, for the cohort and per case
QA_CASES_DIR = "cases"         # cases/<case>/{report.html, qa.json, qa.csv}
QA_CASE_REPORT = "report.html"


def case_folders(split_dir: Path) -> list[Path]:
    """The case folders of a split (hidden folders, e.g. staging areas, are not cases)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return []
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def trainer_identifier(trainer: str, exclude_sites=()) -> str:
    """The trainer part of a model folder's name; leave-site-out adds `_without_<site>[_<site>]`."""
    return f"{trainer}_without_{'_'.join(sorted(exclude_sites))}" if exclude_sites else trainer


def model_folder(results_dataset_dir: Path, trainer: str, plans_name: str, config: str) -> Path:
    return Path(results_dataset_dir) / f"{trainer}__{plans_name}__{config}"


def previous_stage_folder(model_dir: Path, previous_config: str) -> Path:
    """The first-stage model folder of a cascade: same trainer and plans, the previous configuration."""
    trainer, plans_name, _ = parse_model_folder_name(Path(model_dir).name)
    return model_folder(Path(model_dir).parent, trainer, plans_name, previous_config)


def parse_model_folder_name(name: str) -> tuple[str, str, str]:
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        raise NndoseError(f"{name!r} is not a model folder name (<trainer>__<plans>__<configuration>)")
    return parts[0], parts[1], parts[2]


def check_fold(fold: str | int) -> str:
    """'0'..'4' or 'all'; anything else is a one-line error."""
    fold = str(fold)
    if fold not in FOLDS and fold != ALL_FOLD:
        raise NndoseError(f"fold {fold!r} does not exist: folds are {FOLDS[0]}..{FOLDS[-1]} or '{ALL_FOLD}'")
    return fold


def fold_folder(model_dir: Path, fold: str) -> Path:
    return Path(model_dir) / f"fold_{check_fold(fold)}"


def list_folds(model_dir: Path, checkpoint: str = CHECKPOINT_FINAL) -> list[str]:
    """The folds of a model folder that hold `checkpoint`, in fold order ('all' last)."""
    found = [f for f in (*FOLDS, ALL_FOLD) if (Path(model_dir) / f"fold_{f}" / checkpoint).is_file()]
    return found


def ensemble_folds(model_dir: Path, checkpoint: str = CHECKPOINT_FINAL) -> list[str]:
    """The folds a prediction ensembles by default: the cross-validation folds that hold `checkpoint`,
    or 'all' when none does (as in nnU-Net; 'all' trained on every case, the others have validation)."""
    found = list_folds(model_dir, checkpoint)
    numbered = [f for f in found if f != ALL_FOLD]
    return numbered or found


def check_folds(folds) -> list[str]:
    """Each fold checked (check_fold), none given twice."""
    checked = [check_fold(f) for f in folds]
    twice = next((f for i, f in enumerate(checked) if f in checked[:i]), None)
    if twice is not None:
        raise NndoseError(f"fold {twice!r} given twice; name each fold once")
    return checked


def prediction_path(out_dir: Path, case: str) -> Path:
    return Path(out_dir) / f"{case}{NIFTI}"


def spread_path(out_dir: Path, case: str) -> Path:
    return Path(out_dir) / SPREAD_DIR / f"{case}{NIFTI}"


def list_predictions(folder: Path) -> dict[str, Path]:
    """case -> dose file of a prediction folder: `<case>.nii.gz` at its top level only (spread maps
    live in spread/, hidden files are temporaries)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NndoseError(f"{folder}: prediction folder not found")
    return {p.name[: -len(NIFTI)]: p for p in sorted(folder.glob(f"*{NIFTI}"))
            if p.is_file() and not p.name.startswith(".")}


_CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_case_name(name: str) -> str:
    """Case names become file names: letters, digits, '_', '.', '-' only, not starting with '.'."""
    if not _CASE_NAME.fullmatch(name) or name.endswith(NIFTI):
        raise NndoseError(f"case name {name!r} may hold only letters, digits, '_', '.' and '-'")
    return name
