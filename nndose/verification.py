"""Verification of a raw dataset: every case of casesTr (dose required) and casesTs (dose optional)."""
from __future__ import annotations

from pathlib import Path

from nndose.errors import NndoseError
from nndose.io.layout import TEST_DIR, TRAIN_DIR
from nndose.io.raw_dataset import list_cases, load_dataset_json, read_case
from nndose.parallel import map_with_progress
from nndose.preprocessing.body import case_body


def _check(args) -> list[str]:
    case_dir, info, require_dose = args
    case, problems = read_case(case_dir, info, require_dose)
    if case is not None:
        try:
            case_body(case, info.body)
        except NndoseError as e:
            problems.append(str(e))
    return problems


def split_overlap(dataset_dir: Path) -> list[str]:
    """A case in both casesTr and casesTs would be trained on and then tested: a leak."""
    train = {c.name for c in list_cases(dataset_dir, TRAIN_DIR)}
    return [f"{Path(dataset_dir).name}: case {c} is in both {TRAIN_DIR} and {TEST_DIR} (a training case cannot be a "
            f"test case)" for c in sorted(train & {c.name for c in list_cases(dataset_dir, TEST_DIR)})]


def verify_dataset(dataset_dir: Path, num_processes: int = 1, progress: bool = True) -> list[str]:
    """Every problem found, one line each naming case and file; empty when the dataset is usable."""
    dataset_dir = Path(dataset_dir)
    try:
        info = load_dataset_json(dataset_dir)
    except NndoseError as e:
        return [str(e)]
    problems: list[str] = []
    train = list_cases(dataset_dir, TRAIN_DIR)
    if not train:
        problems.append(f"{dataset_dir.name}/{TRAIN_DIR}: no training cases")
    elif info.num_training and info.num_training != len(train):
        problems.append(f"{dataset_dir.name}/dataset.json: numTraining is {info.num_training} but {TRAIN_DIR} holds {len(train)} cases")
    problems += split_overlap(dataset_dir)
    jobs = [(c, info, True) for c in train] + [(c, info, False) for c in list_cases(dataset_dir, TEST_DIR)]
    for found in map_with_progress(_check, jobs, num_processes, "verify", progress):
        problems += found
    return problems
