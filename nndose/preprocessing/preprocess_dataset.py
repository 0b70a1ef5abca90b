"""Preprocess every training case of a raw dataset for one configuration of the plan."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from nndose.io.atomic import staged_directory
from nndose.io.raw_dataset import TRAIN_DIR, DatasetInfo, list_cases, load_case
from nndose.parallel import map_with_progress
from nndose.plans import configuration
from nndose.preprocessing.preprocess_case import preprocess_case
from nndose.preprocessing.storage import save_case


def _one(case_dir: Path, info: DatasetInfo, plans: dict, conf: dict, out: Path) -> str:
    case = load_case(case_dir, info, require_dose=True)
    data, dose, props = preprocess_case(case, info, plans, conf)
    save_case(out, case.name, data, dose, props)
    return case.name


def preprocess_dataset(raw_dir: Path, info: DatasetInfo, plans: dict, config_name: str, preprocessed_dir: Path,
                       num_processes: int = 2, progress: bool = True) -> Path:
    """Writes preprocessed_dir/<data_identifier>/ atomically (replacing an older one); returns it."""
    conf = configuration(plans, config_name)
    final = Path(preprocessed_dir) / conf["data_identifier"]
    cases = list_cases(raw_dir, TRAIN_DIR)
    with staged_directory(final, replace=True) as stage:
        map_with_progress(partial(_one, info=info, plans=plans, conf=conf, out=stage), cases, num_processes,
                          f"preprocess {config_name}", progress)
    return final
