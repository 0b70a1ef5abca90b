"""Predict a folder of raw cases: OUT/<case>.nii.gz (Gy) and, with save_spread, OUT/spread/<case>.nii.gz.

Each case is read once. Outputs are written to a staging folder beside OUT and moved into OUT only
when every case has been predicted, so a failure (a bad case, a full disk, Ctrl-C) leaves OUT as it
was, and no OUT folder at all when there was none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from nndose.errors import NndoseError
from nndose.inference.predictor import DosePredictor
from nndose.io.atomic import remove_stale_temporaries, replace_path, staging_area
from nndose.io.layout import CT_FILE, PLAN_FILE, SPREAD_DIR, check_case_name, prediction_path, spread_path
from nndose.io.raw_dataset import check_case_files, list_cases, load_case
from nndose.io.volumes import write_volume
from nndose.kill_points import kill_point


def predict_folder(in_dir: Path, out_dir: Path, predictor: DosePredictor, save_spread: bool = False,
                   progress: bool = True) -> list[str]:
    """Predict every case folder in in_dir (the casesTs layout)."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise NndoseError(f"{in_dir}: input folder not found")
    if (in_dir / PLAN_FILE).is_file() or any(in_dir.glob(f"{CT_FILE}.*")):
        raise NndoseError(f"{in_dir} is a case folder; -i takes the folder that holds the case folders "
                          f"(e.g. casesTs, or a folder with {in_dir.name}/ in it)")
    cases = list_cases(in_dir.parent, in_dir.name)
    if not cases:
        raise NndoseError(f"{in_dir}: no case folders (expected the casesTs layout: <case>/ct.nii.gz, structures/, plan.json)")
    return predict_cases(cases, out_dir, predictor, save_spread, progress)


def check_dose(dose: np.ndarray, what: str) -> None:
    """No dose leaves nndose holding NaN, infinite or negative values."""
    if not np.all(np.isfinite(dose)):
        raise NndoseError(f"{what}: the prediction holds NaN or infinite values; nothing was written")
    if dose.size and dose.min() < 0:
        raise NndoseError(f"{what}: the prediction holds negative dose; nothing was written")


def _check_output(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NndoseError(f"{out_dir}: exists and is not a folder (-o names the output folder)")


def predict_cases(case_dirs: list[Path], out_dir: Path, predictor: DosePredictor, save_spread: bool = False,
                  progress: bool = True) -> list[str]:
    """Predict the given case folders into out_dir; returns the case names."""
    out_dir = Path(out_dir)
    _check_output(out_dir)
    names = [check_case_name(Path(c).name) for c in case_dirs]
    if len(set(names)) != len(names):
        raise NndoseError("two input cases share a name; every case needs its own")
    remove_stale_temporaries(out_dir.parent, out_dir.name)   # what a killed run left
    remove_stale_temporaries(out_dir)
    for c in case_dirs:   # the quick checks first: a bad case fails in seconds, not after the others
        problems = check_case_files(c, predictor.info, require_dose=False)
        if problems:
            raise NndoseError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    with staging_area(out_dir.parent, f"{out_dir.name}.predict") as stage:
        for case_dir in tqdm(case_dirs, desc="predict", unit="case", disable=not progress):
            case = load_case(case_dir, predictor.info, require_dose=False)
            dose, spread = predictor.predict_case(case)
            check_dose(dose, case.name)
            write_volume(prediction_path(stage, case.name), dose, case.grid)
            if save_spread:
                write_volume(spread_path(stage, case.name), spread, case.grid)
            kill_point("predict:case_staged")
        for name in names:
            replace_path(prediction_path(stage, name), prediction_path(out_dir, name))
            if save_spread:
                (out_dir / SPREAD_DIR).mkdir(exist_ok=True)
                replace_path(spread_path(stage, name), spread_path(out_dir, name))
    return names
