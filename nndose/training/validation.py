"""A fold's validation: predict its validation cases from their preprocessed arrays (exactly what
training saw), keep those predictions as the out-of-fold input of a cascade's second stage, and score
them in Gy on each case's original grid when the raw cases are at hand.

The out-of-fold predictions never depend on the raw folder. Without it (e.g. training on a machine
that only has the preprocessed data) the scores are computed on the preprocessed grid instead, and
the summary says so.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from nndose.evaluation.evaluate import aggregate, breakdown, dvh_points_without_names, score_case
from nndose.inference.predict_cases import check_dose
from nndose.inference.predictor import DosePredictor
from nndose.io.atomic import atomic_write_json
from nndose.io.layout import (ALL_FOLD, OOF_DIR, SPLITS_FILE, SUMMARY_FILE, TRAIN_DIR, VALIDATION_DIR, VALIDATION_DVH_FILE,
                              fold_folder, prediction_path)
from nndose.io.raw_dataset import load_case
from nndose.io.volumes import write_volume
from nndose.paths import ENV_VARIABLES, find_dataset, parse_dataset_id, raw_root
from nndose.preprocessing.preprocess_dataset import check_data_matches_plan
from nndose.preprocessing.storage import array_path, load_case as load_preprocessed, save_array
from nndose.training.splits import load_splits

log = logging.getLogger("nndose.training")


def validate_fold(model_dir: Path, config: str, fold: str, pre: Path, device: torch.device) -> dict | None:
    """Predict the fold's validation cases; write validation/summary.json (and the predictions)."""
    if fold == ALL_FOLD:
        return None
    predictor = DosePredictor(model_dir, config, folds=[fold], device=device, use_tta=True, previous_folds=[fold])
    val = load_splits(pre / SPLITS_FILE)[int(fold)]["val"]
    data_dir = pre / predictor.conf.data_identifier
    check_data_matches_plan(data_dir, predictor.plans, predictor.conf)   # the model's own plan
    raw = _raw_dataset(pre)
    out = fold_folder(model_dir, fold) / VALIDATION_DIR
    scored, preprocessed_grid = [], []
    for name in val:
        data, dose, props = load_preprocessed(data_dir, name, mmap=False)
        mean, _ = predictor.predict_preprocessed(data)
        save_array(array_path(model_dir / OOF_DIR, name), mean[None].astype(np.float32))
        if raw is not None and (raw / TRAIN_DIR / name).is_dir():
            case = load_case(raw / TRAIN_DIR / name, predictor.info, require_dose=True)
            gy = predictor.to_gy(case, mean, props)
            check_dose(gy, name)
            write_volume(prediction_path(out, name), gy, case.grid)
            scored.append(score_case(case, gy, predictor.info))
        else:
            preprocessed_grid.append(_preprocessed_grid_mae(name, mean, dose, data, props, predictor))
    summary = _summary(scored, preprocessed_grid)
    atomic_write_json(out / SUMMARY_FILE, summary)
    if scored:
        atomic_write_json(out / VALIDATION_DVH_FILE, dvh_points_without_names(scored))
    agg = summary["aggregate"]
    if scored:
        print(f"fold {fold} validation: dose score {agg['dose_score']:.3f} Gy, DVH score {agg['dvh_score']:.3f} Gy")
    else:
        log.warning("raw dataset not found: fold %s validated on the preprocessed grid only (MAE in body %.3f Gy)",
                    fold, agg["mae_body_gy"])
    return summary


def _raw_dataset(pre: Path) -> Path | None:
    if not os.environ.get(ENV_VARIABLES[0]):   # nndose_raw unset: validation on the preprocessed grid
        return None
    return find_dataset(raw_root(), parse_dataset_id(pre.name))


def _preprocessed_grid_mae(name, mean, dose, data, props, predictor) -> dict:
    body = data[predictor.conf.stored_channels.index("body")] > 0.5
    ref = props["reference_dose_gy"]
    err = np.abs(np.maximum(mean, 0) - dose[0])[body] * ref if dose is not None else np.array([np.nan])
    return {"case": name, "mae_body_gy": float(err.mean()), "grid": "preprocessed"}


def _summary(scored: list[dict], preprocessed_grid: list[dict]) -> dict:
    if scored:   # cases whose raw folder is missing are listed apart, outside the aggregate
        return {"aggregate": aggregate(scored), "breakdown": breakdown(scored), "cases": scored,
                **({"cases_on_preprocessed_grid": preprocessed_grid} if preprocessed_grid else {})}
    return {"aggregate": {"mae_body_gy": float(np.mean([c["mae_body_gy"] for c in preprocessed_grid]))},
            "grid": "preprocessed", "cases": preprocessed_grid}

