"""The planning API: fingerprint -> plan -> preprocess, callable from Python (the demo, the benchmarks
and the tests use it; `nndose_plan_and_preprocess` is a thin command line around it).

The preprocessed data and the plan change together: each data folder is published complete
(staged, then renamed) with the stamp of the plan settings it was made from, and the plan is written
last; training refuses data whose stamp differs from its plan's (an interrupted re-plan).
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

from nndose.errors import NndoseError
from nndose.experiment_planning.fingerprint import compute_fingerprint
from nndose.experiment_planning.planner import PlannerOptions, plan_experiment
from nndose.io.atomic import atomic_write, atomic_write_json, remove_stale_temporaries
from nndose.io.layout import DATASET_JSON, FINGERPRINT_FILE, PLANS_FILE
from nndose.io.raw_dataset import load_dataset_json
from nndose.paths import preprocessed_root, raw_root, require_dataset
from nndose.plans import CONFIGURATIONS, Plans, save_plans
from nndose.preprocessing.preprocess_dataset import preprocess_dataset
from nndose.kill_points import kill_point
from nndose.verification import split_overlap, verify_dataset

CROP_MARGIN_MM = 10.0


@dataclass(frozen=True, kw_only=True)
class PreprocessingRun:
    """What to do besides planning: which configurations to preprocess, with how many processes."""
    configurations: tuple[str, ...] = CONFIGURATIONS
    num_processes: int = 2
    verify: bool = False
    plan_only: bool = False
    progress: bool = True
    log: object = field(default=print, repr=False, compare=False)   # one line per step

    def __post_init__(self):
        if self.num_processes < 1:
            raise NndoseError("-np must be at least 1")
        unknown = sorted(set(self.configurations) - set(CONFIGURATIONS))
        if unknown:
            raise NndoseError(f"unknown configuration {unknown[0]!r} (choose from {', '.join(CONFIGURATIONS)})")


def plan_and_preprocess(dataset_id: int, options: PlannerOptions = PlannerOptions(),
                        run: PreprocessingRun = PreprocessingRun()) -> Plans:
    """Fingerprint, plan and preprocess the raw dataset `dataset_id`; returns the plan written."""
    raw = require_dataset(raw_root(), dataset_id, "raw")
    info = load_dataset_json(raw)
    if run.verify:
        problems = verify_dataset(raw, run.num_processes, run.progress)
        if problems:
            for p in problems:
                sys.stderr.write(f"nndose_plan_and_preprocess: {p}\n")
            raise NndoseError(f"{raw.name}: {len(problems)} problem(s) found; nothing was written")
    problems = split_overlap(raw)
    if problems:
        raise NndoseError(problems[0])
    out = preprocessed_root() / raw.name
    remove_stale_temporaries(out)
    fingerprint = compute_fingerprint(raw, CROP_MARGIN_MM, run.num_processes, run.progress)
    plans = plan_experiment(fingerprint, info, options)
    out.mkdir(parents=True, exist_ok=True)
    if not run.plan_only:
        done: set[str] = set()
        for name in run.configurations:
            if name not in plans.configurations or plans.configurations[name].data_identifier in done:
                continue
            folder = preprocess_dataset(raw, info, plans, name, out, run.num_processes, run.progress)
            done.add(plans.configurations[name].data_identifier)
            run.log(f"{folder}: preprocessed ({name})")
            kill_point("plan_and_preprocess:data_published")
    # the files that describe the data are published together, last, once the data exist
    atomic_write_json(out / FINGERPRINT_FILE, fingerprint)
    atomic_write(out / DATASET_JSON, lambda p: shutil.copyfile(raw / DATASET_JSON, p))
    save_plans(out / PLANS_FILE, plans)
    run.log(f"{out / PLANS_FILE}: configurations {', '.join(plans.configurations)}")
    return plans
