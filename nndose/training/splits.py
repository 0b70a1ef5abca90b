"""Five-fold cross-validation splits, grouped by patient, stored as splits_final.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_json


def make_splits(cases: list[str], patients: dict[str, str], n_folds: int = 5, seed: int = 12345) -> list[dict]:
    """Folds whose validation sets partition the patients (cases of one patient stay together)."""
    groups = sorted({patients.get(c, c) for c in cases})
    if len(groups) < n_folds:
        raise NndoseError(f"{len(groups)} patient(s) cannot make {n_folds} folds; add cases or train fold 'all'")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[g]: i % n_folds for i, g in enumerate(order)}
    return [{"train": sorted(c for c in cases if fold_of[patients.get(c, c)] != k),
             "val": sorted(c for c in cases if fold_of[patients.get(c, c)] == k)} for k in range(n_folds)]


def load_or_create_splits(path: Path, cases: list[str], patients: dict[str, str]) -> list[dict]:
    path = Path(path)
    if path.is_file():
        splits = json.loads(path.read_text())
        known = {c for s in splits for c in s["train"] + s["val"]}
        if known != set(cases):
            raise NndoseError(f"{path} does not match the preprocessed cases; delete it to make new splits")
        return splits
    splits = make_splits(cases, patients)
    atomic_write_json(path, splits)
    return splits


def fold_cases(splits: list[dict], fold: str | int, cases: list[str]) -> tuple[list[str], list[str]]:
    if str(fold) == "all":
        return sorted(cases), []
    k = int(fold)
    if not 0 <= k < len(splits):
        raise NndoseError(f"fold {fold} does not exist (0..{len(splits) - 1} or 'all')")
    return splits[k]["train"], splits[k]["val"]
