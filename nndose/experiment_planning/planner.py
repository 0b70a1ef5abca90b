"""The auto-planner: fingerprint -> nndosePlans.json (spacing, patch, topology, batch size, channels).

Rules, in the spirit of nnU-Net:
- target spacing: the median spacing; for strongly anisotropic data (max/min > 3) the coarse axis
  takes the 10th percentile, so the network does not drown in interpolated slices;
- topology: an axis is pooled while its feature map stays >= 4 voxels and its spacing is no more
  than twice the finest; kernels are 1 along axes still much coarser than the finest (else 3);
  features 32 doubling to at most 320; residual encoder blocks (1, 3, 4, 6, 6, 6, 6); the network
  class named in the plan (ResEncUNet by default);
- patch: starts at the median cropped image at target spacing (at most 256^3 voxels-equivalent),
  made divisible by the pooling, and shrinks along its largest axis (relative to the image) until the
  memory estimate of the real network (memory_estimate.py) for batch size 2 fits the budget;
- batch size: as many samples as fit the budget, at most 5 % of the dataset's voxels, at least 2;
- channels: CT, prescription, organs, body and the beam geometry; with beam_per_delivery (opt-in: it lowers
  the dose error on phantoms re-planned by an independent engine, but plan QA gains nothing on those
  plans and loses on the phantom engine's) one beam channel per delivery (static, arc, non-coplanar)
  when the dataset's plans mix them;
- 3d_lowres exists only when the image is over 4x the patch volume; 3d_cascade_fullres is the
  dose-mask cascade: 3d_fullres plus N dose masks from a first-stage prediction.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from nndose import __version__
from nndose.errors import NndoseError
from nndose.experiment_planning.memory_estimate import estimate_training_bytes
from nndose.geometry.beams import DELIVERIES
from nndose.io.raw_dataset import DatasetInfo
from nndose.networks import network_class
from nndose.plans import (DOSE_MASK_PREFIX, Architecture, BeamChannelSettings, Configuration, CTNormalization, Plans,
                          TrainingRecipe)
from nndose.preprocessing.channels import BEAM_CHANNEL, delivery_channel, organ_channel

MIN_FEATURE_MAP = 4
MAX_STAGES = 6
PLANS_NAME = "nndosePlans"


@dataclass(frozen=True, kw_only=True)
class PlannerOptions:
    """What the planner may choose within. The defaults plan for a GPU; smaller networks, patches and
    batches make a CPU plan (see CPU_PLANNER below)."""
    gpu_memory_target_gb: float = 8.0
    beam_channels: bool = True
    beam_per_delivery: bool = False   # one beam channel per delivery when the plans mix them (opt-in, below)
    base_features: int = 32
    max_features: int = 320
    encoder_blocks: tuple[int, ...] = (1, 3, 4, 6, 6, 6, 6)
    max_patch: int = 256            # the patch holds at most max_patch^3 voxels
    max_batch: int | None = None    # batch size at most this (default: what the memory budget allows)
    network: str = "ResEncUNet"     # a class of nndose.networks.NETWORKS
    num_dose_masks: int = 10        # the cascade's dose masks at 1/N, 2/N, ... of the reference dose
    recipe: TrainingRecipe = TrainingRecipe()   # how to train (None fields: the trainer's defaults)

    def __post_init__(self):
        sizes = (self.base_features, self.max_features, self.max_patch, self.num_dose_masks, *self.encoder_blocks,
                 1 if self.max_batch is None else self.max_batch)
        if not self.encoder_blocks or min(sizes) < 1:
            raise NndoseError("--base_features, --max_features, --max_patch, --max_batch and --encoder_blocks "
                              "must be positive")
        if not self.gpu_memory_target_gb > 1.0:
            raise NndoseError("--gpu_memory_target must exceed 1 GB")
        network_class(self.network)

    def to_json(self) -> dict:
        return {**asdict(self), "encoder_blocks": list(self.encoder_blocks), "recipe": self.recipe.chosen()}


# A CPU-sized network (the demo's, the CPU benchmarks'): 16 features doubling to 128, one block per
# stage, patches of at most 48^3 voxels. Chosen on the demo's phantoms (8 held out, 30 x 20 iterations
# on 2 cores): DVH score 4.37 Gy against the distance-falloff baseline's 7.51 (8 to 64 features and
# 32^3 patches, the former choice: 6.38; 16 to 128 features alone 4.56; 48^3 patches alone 5.01).
CPU_PLANNER = PlannerOptions(base_features=16, max_features=128, encoder_blocks=(1,), max_patch=48)


def target_spacing(fingerprint: dict) -> list[float]:
    spacings = np.asarray(fingerprint["spacings_zyx"], dtype=float)
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    if target[worst] > 3 * target.min():
        target[worst] = max(np.percentile(spacings[:, worst], 10), target.min())
    return [float(round(v, 4)) for v in target]


def topology(spacing_zyx, patch_zyx, options: PlannerOptions = PlannerOptions()) -> tuple[Architecture, list[int]]:
    """The network for this spacing and patch, and the patch rounded to what its pooling divides."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    size = np.asarray(patch_zyx, dtype=float)
    strides, kernels = [(1, 1, 1)], []
    cur_sp = spacing.copy()
    kernels.append(tuple(3 if s <= 2 * cur_sp.min() else 1 for s in cur_sp))
    while len(strides) < MAX_STAGES:
        pool = tuple(1 if (size[a] / 2 < MIN_FEATURE_MAP or cur_sp[a] > 2 * cur_sp.min()) else 2 for a in range(3))
        if max(pool) == 1:
            break
        strides.append(pool)
        size = size / np.asarray(pool)
        cur_sp = cur_sp * np.asarray(pool)
        kernels.append(tuple(3 if s <= 2 * cur_sp.min() else 1 for s in cur_sp))
    divisor = np.prod(np.asarray(strides), axis=0)
    patch = [int(max(d, math.ceil(p / d) * d)) for p, d in zip(patch_zyx, divisor)]
    n = len(strides)
    blocks = (list(options.encoder_blocks) + [options.encoder_blocks[-1]] * n)[:n]
    arch = Architecture(options.network, tuple(min(options.base_features * 2 ** s, options.max_features) for s in range(n)),
                        tuple(kernels), tuple(strides), tuple(int(b) for b in blocks), (1,) * (n - 1))
    return arch, patch


def _divisor(arch: Architecture) -> list[int]:
    return [math.prod(s[a] for s in arch.strides) for a in range(3)]


def plan_configuration(name: str, data_identifier: str, channels: list[str], spacing_zyx, median_shape_zyx,
                       budget_bytes: int, dataset_voxels: float, options: PlannerOptions = PlannerOptions()) -> Configuration:
    """The configuration: patch shrunk until batch 2 fits the budget, then as large a batch as fits."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    median = np.asarray(median_shape_zyx, dtype=float)
    n_in = len(channels)
    patch = median.copy()
    max_voxels = options.max_patch ** 3
    if np.prod(patch) > max_voxels:
        patch *= (max_voxels / np.prod(patch)) ** (1 / 3)
    arch, patch = topology(spacing, np.maximum(patch, MIN_FEATURE_MAP), options)
    while estimate_training_bytes(arch, n_in, patch, 2) > budget_bytes:
        p = np.asarray(patch, dtype=float)
        axis = int(np.argmax(p / median))
        p[axis] -= _divisor(arch)[axis]
        if p[axis] < MIN_FEATURE_MAP * 2:
            break
        arch, patch = topology(spacing, p, options)
    batch = batch_size(arch, n_in, patch, budget_bytes, dataset_voxels, options)
    return Configuration(name, data_identifier, tuple(channels), tuple(float(s) for s in spacing),
                         tuple(int(round(m)) for m in median), tuple(patch), batch, arch,
                         memory_gb(arch, n_in, patch, batch))


def batch_size(arch: Architecture, n_in: int, patch, budget_bytes: int, dataset_voxels: float,
               options: PlannerOptions) -> int:
    """As many samples as fit the budget, at most 5 % of the dataset's voxels and options.max_batch, at least 2."""
    fixed = estimate_training_bytes(arch, n_in, patch, 0)
    per_sample = estimate_training_bytes(arch, n_in, patch, 1) - fixed
    batch = max(2, int((budget_bytes - fixed) // max(per_sample, 1)))
    cap = max(2, int(0.05 * dataset_voxels / np.prod(patch)))
    return int(min(batch, cap, batch if options.max_batch is None else options.max_batch))


def memory_gb(arch: Architecture, n_in: int, patch, batch: int) -> float:
    return round(estimate_training_bytes(arch, n_in, patch, batch) / 2 ** 30, 3)


def deliveries(fingerprint: dict) -> list[str]:
    """The deliveries (geometry.beams.DELIVERIES: coplanar static beams, coplanar arcs, anything with
    the couch turned) the dataset's plans use; none known from a fingerprint written before they were
    recorded."""
    used = {d for c in fingerprint.get("cases", []) for d in c.get("deliveries", ())}
    return [d for d in DELIVERIES if d in used]


def input_channels(info: DatasetInfo, beam_channels: bool = True, used_deliveries=()) -> list[str]:
    """CT, prescription, organs, body, and the beam geometry: one channel, or one per delivery when the
    dataset mixes them (its plans' arcs modulate differently from static beams, and a couch-turned
    beam would be one of many in a sum)."""
    beams = [delivery_channel(d) for d in used_deliveries] if len(used_deliveries) > 1 else [BEAM_CHANNEL]
    return (["ct", "prescription"] + [organ_channel(o) for o in info.organs] + ["body"]
            + (beams if beam_channels else []))


def plan_experiment(fingerprint: dict, info: DatasetInfo, options: PlannerOptions = PlannerOptions(),
                    plans_name: str = PLANS_NAME) -> Plans:
    """The plan of a dataset: 3d_fullres, 3d_lowres for large images, and the dose-mask cascade."""
    spacing = target_spacing(fingerprint)
    shapes = [np.asarray(s) * np.asarray(sp) / np.asarray(spacing)
              for s, sp in zip(fingerprint["cropped_shapes_zyx"], fingerprint["spacings_zyx"])]
    median_shape = np.median(shapes, axis=0)
    dataset_voxels = float(sum(np.prod(s) for s in shapes))
    channels = input_channels(info, options.beam_channels,
                              deliveries(fingerprint) if options.beam_per_delivery else ())
    budget = int(options.gpu_memory_target_gb * 2 ** 30)
    full_id = f"{plans_name}_3d_fullres"
    full = plan_configuration("3d_fullres", full_id, channels, spacing, median_shape, budget, dataset_voxels, options)
    configs = {"3d_fullres": full}
    if np.prod(median_shape) > 4 * np.prod(full.patch_size_zyx):
        factor = (np.prod(median_shape) / (2 * np.prod(full.patch_size_zyx))) ** (1 / 3)
        configs["3d_lowres"] = plan_configuration("3d_lowres", f"{plans_name}_3d_lowres", channels,
                                                  np.asarray(spacing) * factor, median_shape / factor, budget,
                                                  dataset_voxels / factor ** 3, options)
    # the dose-mask cascade: 3d_fullres's data, patch and network with N more input channels
    n = options.num_dose_masks
    cascade_channels = tuple(channels) + tuple(f"{DOSE_MASK_PREFIX}{k + 1}" for k in range(n))
    batch = batch_size(full.network, len(cascade_channels), full.patch_size_zyx, budget, dataset_voxels, options)
    configs["3d_cascade_fullres"] = replace(
        full, name="3d_cascade_fullres", channels=cascade_channels, batch_size=batch,
        estimated_memory_gb=memory_gb(full.network, len(cascade_channels), full.patch_size_zyx, batch),
        previous_stage="3d_fullres", dose_mask_levels=tuple(round((k + 1) / n, 4) for k in range(n)))
    ct = fingerprint["ct_in_body"]
    return Plans(plans_name, fingerprint["dataset"], __version__, dict(info.structures), fingerprint["crop_margin_mm"],
                 CTNormalization(ct["percentile_00_5"], ct["percentile_99_5"], ct["mean"], max(ct["std"], 1.0)),
                 BeamChannelSettings(options.beam_channels), configs, options.gpu_memory_target_gb,
                 planner=options.to_json(), training=options.recipe)
