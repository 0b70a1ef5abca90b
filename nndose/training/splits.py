"""Five-fold cross-validation splits, grouped by patient, stored as splits_final.json.

A patient's plans (cases sharing a patient_id) always fall on the same side of every fold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_json
from nndose.io.json_file import read_json
from nndose.io.layout import ALL_FOLD, FOLDS, check_fold


def make_splits(cases: list[str], patients: dict[str, str], n_folds: int = len(FOLDS), seed: int = 12345) -> list[dict]:
    """Folds whose validation sets partition the patients (cases of one patient stay together)."""
    groups = sorted({patients.get(c, c) for c in cases})
    if len(groups) < n_folds:
        raise NndoseError(f"{len(groups)} patient(s) cannot make {n_folds} folds; add cases or train fold 'all'")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[g]: i % n_folds for i, g in enumerate(order)}
    return [{"train": sorted(c for c in cases if fold_of[patients.get(c, c)] != k),
             "val": sorted(c for c in cases if fold_of[patients.get(c, c)] == k)} for k in range(n_folds)]


def load_splits(path: Path) -> list[dict]:
    """splits_final.json, checked: one {"train": [...], "val": [...]} per fold."""
    splits = read_json(path)
    ok = (isinstance(splits, list) and len(splits) == len(FOLDS)
          and all(isinstance(s, dict) and all(isinstance(s.get(k), list) and all(isinstance(c, str) for c in s[k])
                                              for k in ("train", "val")) for s in splits))
    if not ok:
        raise NndoseError(f"{path}: not a splits file ({len(FOLDS)} folds of train and val case lists); "
                          f"delete it to make new splits")
    return splits


def load_or_create_splits(path: Path, cases: list[str], patients: dict[str, str]) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        splits = make_splits(cases, patients)
        atomic_write_json(path, splits)
        return splits
    splits = load_splits(path)
    known = {c for s in splits for c in s["train"] + s["val"]}
    if known != set(cases):
        raise NndoseError(f"{path} does not match the preprocessed cases; delete it to make new splits")
    for k, s in enumerate(splits):
        shared = {patients.get(c, c) for c in s["train"]} & {patients.get(c, c) for c in s["val"]}
        if shared:
            raise NndoseError(f"{path}: fold {k} has patient {sorted(shared)[0]} on both sides (made before the "
                              f"cases carried patient_id?); delete it to make new splits")
    return splits


def fold_cases(splits: list[dict], fold: str | int, cases: list[str]) -> tuple[list[str], list[str]]:
    fold = check_fold(fold)
    if fold == ALL_FOLD:
        return sorted(cases), []
    return splits[int(fold)]["train"], splits[int(fold)]["val"]
