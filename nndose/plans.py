"""The plan (nndosePlans.json): the single contract between experiment planning and the rest of nndose.

Loaded and validated once into frozen dataclasses; every stage reads `Plans` and `Configuration`
attributes, never JSON keys. A configuration in the file may inherit from another
("inherits_from") and override keys; loading resolves that. The network is named in the plan
(`network.class_name`, one of `nndose.networks.NETWORKS`) and built from it, so a variant network
is a plan change.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_json
from nndose.io.json_file import read_json
from nndose.io.raw_dataset import STRUCTURE_KINDS, StructureVocabulary

PLANS_VERSION = 2
READABLE_VERSIONS = (1, 2)   # version 1 (before the network class and the training recipe) reads as ResEncUNet, no recipe
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")   # plans names and data identifiers become folder names
CONFIGURATIONS = ("3d_fullres", "3d_lowres", "3d_cascade_fullres")
DOSE_MASK_PREFIX = "dose_mask_"
ORGAN_PREFIX = "organ_"


@dataclass(frozen=True)
class Architecture:
    """A U-Net topology: per stage its features, kernel, stride (the first is 1) and encoder blocks."""
    class_name: str
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    n_blocks_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    def to_json(self) -> dict:
        return {"class_name": self.class_name, "n_stages": self.n_stages,
                "features_per_stage": list(self.features_per_stage),
                "kernel_sizes": [list(k) for k in self.kernel_sizes], "strides": [list(s) for s in self.strides],
                "n_blocks_per_stage": list(self.n_blocks_per_stage),
                "n_conv_per_stage_decoder": list(self.n_conv_per_stage_decoder)}


@dataclass(frozen=True)
class Configuration:
    name: str
    data_identifier: str
    channels: tuple[str, ...]
    spacing_zyx: tuple[float, float, float]
    median_shape_zyx: tuple[int, int, int]
    patch_size_zyx: tuple[int, int, int]
    batch_size: int
    network: Architecture
    estimated_memory_gb: float
    previous_stage: str | None = None
    dose_mask_levels: tuple[float, ...] = ()

    @property
    def stored_channels(self) -> tuple[str, ...]:
        """Channels stored by preprocessing (dose masks come from a first-stage prediction at run time)."""
        return tuple(c for c in self.channels if not c.startswith(DOSE_MASK_PREFIX))

    def to_json(self) -> dict:
        d = {"data_identifier": self.data_identifier, "channels": list(self.channels),
             "spacing_zyx": list(self.spacing_zyx), "median_shape_zyx": list(self.median_shape_zyx),
             "patch_size_zyx": list(self.patch_size_zyx), "batch_size": self.batch_size,
             "network": self.network.to_json(), "estimated_memory_gb": self.estimated_memory_gb}
        if self.previous_stage:
            d |= {"previous_stage": self.previous_stage, "dose_mask_levels": list(self.dose_mask_levels)}
        return d


@dataclass(frozen=True)
class CTNormalization:
    """Clip to the dataset's body HU percentiles, then z-score with the body mean and std."""
    clip_low: float
    clip_high: float
    mean: float
    std: float


@dataclass(frozen=True)
class BeamChannelSettings:
    enabled: bool
    arc_step_deg: float = 10.0
    margin_mm: float = 5.0
    penumbra_mm: float = 3.0
    pixel_mm: float = 2.0


AMP_DTYPES = ("float16", "bfloat16")
LR_SCHEDULES = ("poly", "cosine")


@dataclass(frozen=True, kw_only=True)
class TrainingRecipe:
    """How to train, as the planner chose it for the machine it plans for. None leaves the trainer's
    default; a trainer variant that sets a value itself keeps it."""
    amp_dtype: str | None = None          # mixed precision on CUDA: "float16" (with loss scaling) or "bfloat16"
    channels_last: bool | None = None     # the channels_last_3d memory format for the network and its inputs
    compile: bool | None = None           # torch.compile the training model on CUDA
    initial_lr: float | None = None       # the peak learning rate
    warmup_epochs: int | None = None      # linear warm-up to the peak over this many epochs
    lr_schedule: str | None = None        # decay after the warm-up: "poly" (exponent 0.9) or "cosine"
    ema_decay: float | None = None        # exponential moving average of the weights (0: none)

    def __post_init__(self):
        checks = ((self.amp_dtype is None or self.amp_dtype in AMP_DTYPES, f"amp_dtype must be one of {', '.join(AMP_DTYPES)}"),
                  (self.lr_schedule is None or self.lr_schedule in LR_SCHEDULES,
                   f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
                  (self.initial_lr is None or 0 < self.initial_lr < 1, "initial_lr must lie in (0, 1)"),
                  (self.warmup_epochs is None or self.warmup_epochs >= 0, "warmup_epochs must be 0 or more"),
                  (self.ema_decay is None or 0 <= self.ema_decay < 1, "ema_decay must lie in [0, 1)"))
        for ok, what in checks:
            if not ok:
                raise NndoseError(f"training recipe: {what}")

    def chosen(self) -> dict:
        """The fields the planner set."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Plans(StructureVocabulary):
    plans_name: str
    dataset_name: str
    nndose_version: str
    structures: dict[str, str]                 # name -> kind, the dataset's vocabulary in order
    crop_margin_mm: float
    ct_normalization: CTNormalization
    beam_channels: BeamChannelSettings
    configurations: dict[str, Configuration]   # inheritance resolved
    gpu_memory_target_gb: float
    planner: dict = field(default_factory=dict)   # the options the planner ran with (a record)
    extra: dict = field(default_factory=dict)     # e.g. finetuned_from
    training: TrainingRecipe = TrainingRecipe()

    def configuration(self, name: str) -> Configuration:
        if name not in self.configurations:
            raise NndoseError(f"configuration {name!r} is not in the plan "
                              f"(available: {', '.join(self.configurations) or 'none'})")
        return self.configurations[name]

    def with_configuration(self, conf: Configuration) -> "Plans":
        return replace(self, configurations={**self.configurations, conf.name: conf})

    def to_json(self) -> dict:
        n = self.ct_normalization
        return {"plans_version": PLANS_VERSION, "nndose_version": self.nndose_version, "plans_name": self.plans_name,
                "dataset_name": self.dataset_name, "gpu_memory_target_gb": self.gpu_memory_target_gb,
                "planner": self.planner, "structures": dict(self.structures), "targets": self.targets,
                "organs": self.organs, "body": self.body, "crop_margin_mm": self.crop_margin_mm,
                "ct_normalization": {"scheme": "clip_zscore", "clip_low": n.clip_low, "clip_high": n.clip_high,
                                     "mean": n.mean, "std": n.std},
                "dose_normalization": {"scheme": "reference_dose", "reference": "highest_prescription",
                                       "note": "target = dose / reference dose; prediction multiplies back"},
                "beam_channels": vars(self.beam_channels).copy(), "training": self.training.chosen(),
                "configurations": {name: c.to_json() for name, c in self.configurations.items()},
                **self.extra}


# ----- parsing ----------------------------------------------------------------------------------
_KNOWN_TOP = {"plans_version", "nndose_version", "plans_name", "dataset_name", "gpu_memory_target_gb", "planner",
              "structures", "targets", "organs", "body", "crop_margin_mm", "ct_normalization", "dose_normalization",
              "beam_channels", "configurations", "training"}


class _Reader:
    """Typed access to one JSON object with one-line errors that name the key."""

    def __init__(self, d: object, where: str):
        if not isinstance(d, dict):
            raise NndoseError(f"{where}: expected a JSON object")
        self.d, self.where = d, where

    def get(self, key: str, default=...):
        if key not in self.d:
            if default is ...:
                raise NndoseError(f"{self.where}: missing '{key}'")
            return default
        return self.d[key]

    def number(self, key: str, positive: bool = False, default=...) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            raise NndoseError(f"{self.where}: '{key}' must be a finite{' positive' if positive else ''} number, got {v!r}")
        return float(v)

    def string(self, key: str, default=...) -> str:
        v = self.get(key, default)
        if not isinstance(v, str) or not v:
            raise NndoseError(f"{self.where}: '{key}' must be a non-empty string, got {v!r}")
        return v

    def integer(self, key: str, minimum: int = 1) -> int:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise NndoseError(f"{self.where}: '{key}' must be a whole number >= {minimum}, got {v!r}")
        return v

    def ints(self, key: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
        v = self.get(key)
        if (not isinstance(v, list) or (length is not None and len(v) != length) or not v
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in v)):
            size = f"{length} " if length else ""
            raise NndoseError(f"{self.where}: '{key}' must be a list of {size}whole numbers >= {minimum}, got {v!r}")
        return tuple(v)

    def triples(self, key: str) -> tuple[tuple[int, int, int], ...]:
        v = self.get(key)
        if not isinstance(v, list) or not v:
            raise NndoseError(f"{self.where}: '{key}' must be a list of [z, y, x] triples")
        return tuple(_Reader({key: t}, self.where).ints(key, 3) for t in v)


def _architecture(d: object, where: str) -> Architecture:
    r = _Reader(d, where)
    arch = Architecture(r.string("class_name", "ResEncUNet"), r.ints("features_per_stage"), r.triples("kernel_sizes"),
                        r.triples("strides"), r.ints("n_blocks_per_stage"), r.ints("n_conv_per_stage_decoder"))
    n = arch.n_stages
    if (len(arch.kernel_sizes), len(arch.strides), len(arch.n_blocks_per_stage), len(arch.n_conv_per_stage_decoder)) != (n, n, n, n - 1):
        raise NndoseError(f"{where}: features, kernels, strides and blocks need one entry per stage "
                          f"({n}) and the decoder one fewer")
    return arch


def _configuration(name: str, d: dict, where: str) -> Configuration:
    r = _Reader(d, where)
    channels = r.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) and c for c in channels):
        raise NndoseError(f"{where}: 'channels' must be a list of channel names")
    if "body" not in channels:
        raise NndoseError(f"{where}: the channels lack 'body' (the loss and the output are masked by it)")
    if len(set(channels)) != len(channels):
        raise NndoseError(f"{where}: a channel is listed twice")
    spacing = r.get("spacing_zyx")
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in spacing)):
        raise NndoseError(f"{where}: 'spacing_zyx' must be three positive numbers, got {spacing!r}")
    previous = r.get("previous_stage", None)
    if previous is not None and (not isinstance(previous, str) or previous == name):
        raise NndoseError(f"{where}: 'previous_stage' must name another configuration, got {previous!r}")
    levels = r.get("dose_mask_levels", []) or []
    masks = [c for c in channels if c.startswith(DOSE_MASK_PREFIX)]
    if (not isinstance(levels, list) or len(levels) != len(masks) or (masks and previous is None)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 2 for v in levels)):
        raise NndoseError(f"{where}: {len(masks)} dose-mask channel(s) need a previous_stage and as many "
                          f"'dose_mask_levels' in (0, 2], got {levels!r}")
    levels = tuple(float(v) for v in levels)
    data_identifier = r.string("data_identifier")
    if not SAFE_NAME.fullmatch(data_identifier):
        raise NndoseError(f"{where}: 'data_identifier' {data_identifier!r} may hold only letters, digits, '_' and '-'")
    network = _architecture(r.get("network"), f"{where}.network")
    patch = r.ints("patch_size_zyx", 3)
    divisor = [math.prod(s[a] for s in network.strides) for a in range(3)]
    if any(p % d for p, d in zip(patch, divisor)):
        raise NndoseError(f"{where}: patch {list(patch)} is not divisible by the network's pooling {divisor}")
    return Configuration(name, data_identifier, tuple(channels), tuple(float(s) for s in spacing),
                         r.ints("median_shape_zyx", 3), patch, r.integer("batch_size"), network,
                         r.number("estimated_memory_gb", default=0.0), previous, levels)


def _training_recipe(d: object, where: str) -> TrainingRecipe:
    if not isinstance(d, dict):
        raise NndoseError(f"{where}: expected a JSON object")
    unknown = sorted(set(d) - set(vars(TrainingRecipe())))
    if unknown:
        raise NndoseError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(vars(TrainingRecipe()))})")
    types = {"amp_dtype": str, "lr_schedule": str, "channels_last": bool, "compile": bool, "initial_lr": (int, float),
             "warmup_epochs": int, "ema_decay": (int, float)}
    for key, value in d.items():
        if isinstance(value, bool) != (types[key] is bool) or not isinstance(value, types[key]):
            raise NndoseError(f"{where}: {key} {value!r} has the wrong type")
    try:
        return TrainingRecipe(**d)
    except NndoseError as e:
        raise NndoseError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def _resolve(configs: dict, name: str, source: str) -> dict:
    conf = configs[name]
    if not isinstance(conf, dict):
        raise NndoseError(f"{source}: configuration {name!r} must be a JSON object")
    conf, seen = dict(conf), {name}
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in seen or parent not in configs or not isinstance(configs[parent], dict):
            raise NndoseError(f"{source}: configuration {name!r} inherits from unknown or circular {parent!r}")
        seen.add(parent)
        conf = {**configs[parent], **conf}
    return conf


def parse_plans(d: object, source: str) -> Plans:
    """Validate a plan file's JSON object; every problem is a one-line NndoseError naming the key."""
    r = _Reader(d, source)
    version = r.get("plans_version", None)
    if version not in READABLE_VERSIONS:
        raise NndoseError(f"{source}: plan version {version!r} is not supported by this nndose (it reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}); plan the dataset again with this nndose, or use "
                          f"the nndose that made the plan")
    structures = r.get("structures")
    if not isinstance(structures, dict) or not all(k in STRUCTURE_KINDS for k in structures.values()):
        raise NndoseError(f"{source}: 'structures' must map names to target, oar or body")
    configs = r.get("configurations")
    if not isinstance(configs, dict) or not configs:
        raise NndoseError(f"{source}: 'configurations' must name at least one configuration")
    resolved = {name: _configuration(name, _resolve(configs, name, source), f"{source}: configuration {name}")
                for name in configs}
    for conf in resolved.values():
        seen, stage = {conf.name}, conf
        while stage.previous_stage:
            if stage.previous_stage not in resolved or stage.previous_stage in seen:
                raise NndoseError(f"{source}: configuration {conf.name}: previous stage {stage.previous_stage!r} is unknown "
                                  f"or circular")
            seen.add(stage.previous_stage)
            stage = resolved[stage.previous_stage]
    plans_name = r.string("plans_name")
    if not SAFE_NAME.fullmatch(plans_name):
        raise NndoseError(f"{source}: 'plans_name' {plans_name!r} may hold only letters, digits, '_' and '-'")
    enabled = _Reader(r.get("beam_channels"), f"{source}: beam_channels").get("enabled")
    if not isinstance(enabled, bool):
        raise NndoseError(f"{source}: beam_channels: 'enabled' must be true or false, got {enabled!r}")
    ct = _Reader(r.get("ct_normalization"), f"{source}: ct_normalization")
    beam = _Reader(r.get("beam_channels"), f"{source}: beam_channels")
    planner = r.get("planner", {})
    training = _training_recipe(r.get("training", {}), f"{source}: training")
    return Plans(plans_name, str(r.get("dataset_name", "")), str(r.get("nndose_version", "")),
                 dict(structures), r.number("crop_margin_mm"),
                 CTNormalization(ct.number("clip_low"), ct.number("clip_high"), ct.number("mean"),
                                 ct.number("std", positive=True)),
                 BeamChannelSettings(enabled, beam.number("arc_step_deg", positive=True),
                                     beam.number("margin_mm"), beam.number("penumbra_mm", positive=True),
                                     beam.number("pixel_mm", positive=True)),
                 resolved, r.number("gpu_memory_target_gb", default=0.0), planner if isinstance(planner, dict) else {},
                 {k: v for k, v in d.items() if k not in _KNOWN_TOP}, training)


def load_plans(path: Path | str) -> Plans:
    return parse_plans(read_json(path, "run nndose_plan_and_preprocess first"), str(path))


def save_plans(path: Path | str, plans: Plans) -> None:
    atomic_write_json(path, plans.to_json())
