"""Preprocess every training case of a raw dataset for one configuration of the plan.

The data folder is published complete, with a stamp of the plan settings that shaped it; training
checks the stamp against its plan (`check_data_matches_plan`), so data from another plan (e.g. an
interrupted re-plan) is refused rather than trained on.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_text, staged_directory
from nndose.io.layout import TRAIN_DIR
from nndose.io.raw_dataset import DatasetInfo, list_cases, load_case
from nndose.parallel import map_with_progress
from nndose.plans import Configuration, Plans
from nndose.preprocessing.preprocess_case import preprocess_case
from nndose.preprocessing.storage import STAMP_FILE, save_case

def data_stamp(plans: Plans, conf: Configuration) -> str:
    """A digest of every plan setting the preprocessed arrays depend on."""
    shaping = {"structures": plans.structures, "crop_margin_mm": plans.crop_margin_mm,
               "ct_normalization": asdict(plans.ct_normalization), "beam_channels": asdict(plans.beam_channels),
               "channels": list(conf.stored_channels), "spacing_zyx": list(conf.spacing_zyx)}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def check_data_matches_plan(folder: Path, plans: Plans, conf: Configuration) -> None:
    stamp = Path(folder) / STAMP_FILE
    found = stamp.read_text().strip() if stamp.is_file() else None
    if found != data_stamp(plans, conf):
        raise NndoseError(f"{folder}: the preprocessed data do not match the plan's {conf.name} (an interrupted or "
                          f"older nndose_plan_and_preprocess?); run nndose_plan_and_preprocess again")


def _one(case_dir: Path, info: DatasetInfo, plans: Plans, conf: Configuration, out: Path) -> str:
    case = load_case(case_dir, info, require_dose=True)
    data, dose, props = preprocess_case(case, plans, conf)
    save_case(out, case.name, data, dose, props)
    return case.name


def preprocess_dataset(raw_dir: Path, info: DatasetInfo, plans: Plans, config_name: str, preprocessed_dir: Path,
                       num_processes: int = 2, progress: bool = True) -> Path:
    """Writes preprocessed_dir/<data_identifier>/ atomically (replacing an older one); returns it."""
    conf = plans.configuration(config_name)
    final = Path(preprocessed_dir) / conf.data_identifier
    cases = list_cases(raw_dir, TRAIN_DIR)
    with staged_directory(final, replace=True) as stage:
        map_with_progress(partial(_one, info=info, plans=plans, conf=conf, out=stage), cases, num_processes,
                          f"preprocess {config_name}", progress)
        atomic_write_text(stage / STAMP_FILE, data_stamp(plans, conf) + "\n")
    return final
