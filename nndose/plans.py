"""The plan file (nndosePlans.json): the single contract between experiment planning and nndose.

Written by `experiment_planning`, read here. A configuration may inherit from another
("inherits_from") and override keys; `configuration()` resolves that.
"""
from __future__ import annotations

from pathlib import Path

from nndose.errors import NndoseError
from nndose.io.json_file import read_json

PLANS_VERSION = 1
PLANS_FILE = "nndosePlans.json"
FINGERPRINT_FILE = "dataset_fingerprint.json"
CONFIGURATIONS = ("3d_fullres", "3d_lowres", "3d_cascade_fullres")
DOSE_MASK_PREFIX = "dose_mask_"
BEAM_PREFIX = "beam_"


def load_plans(path: Path | str) -> dict:
    plans = read_json(path, "run nndose_plan_and_preprocess first")
    version = plans.get("plans_version") if isinstance(plans, dict) else None
    if version != PLANS_VERSION:
        raise NndoseError(f"{path}: plan version {version!r} is not supported by this nndose "
                          f"(expects {PLANS_VERSION}); re-run nndose_plan_and_preprocess")
    return plans


def configuration(plans: dict, name: str) -> dict:
    """The resolved configuration `name` (inheritance applied)."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise NndoseError(f"configuration {name!r} is not in the plan (available: {', '.join(configs) or 'none'})")
    conf = dict(configs[name])
    seen = {name}
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise NndoseError(f"configuration {name!r} inherits from unknown or circular {parent!r}")
        seen.add(parent)
        conf = {**configs[parent], **conf}
    return conf


def preprocessed_channels(conf: dict) -> list[str]:
    """Channels stored by preprocessing (dose masks come from a first-stage prediction at run time)."""
    return [c for c in conf["channels"] if not c.startswith(DOSE_MASK_PREFIX)]
