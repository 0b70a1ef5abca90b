"""The auto-planner: fingerprint -> nndosePlans.json (spacing, patch, topology, batch size, channels).

Rules, in the spirit of nnU-Net:
- target spacing: the median spacing; for strongly anisotropic data (max/min > 3) the coarse axis
  takes the 10th percentile, so the network does not drown in interpolated slices;
- topology: an axis is pooled while its feature map stays >= 4 voxels and its spacing is no more
  than twice the finest; kernels are 1 along axes still much coarser than the finest (else 3);
  features 32 doubling to at most 320; residual encoder blocks (1, 3, 4, 6, 6, 6, 6);
- patch: starts at the median cropped image at target spacing (at most 256^3 voxels-equivalent),
  made divisible by the pooling, and shrinks along its largest axis (relative to the image) until the
  memory estimate for batch size 2 fits the budget;
- batch size: as many samples as fit the budget, at most 5 % of the dataset's voxels, at least 2;
- 3d_lowres exists only when the image is over 4x the patch volume; 3d_cascade_fullres is the
  dose-mask cascade: 3d_fullres plus N dose masks from a first-stage prediction.
"""
from __future__ import annotations

import math

import numpy as np

from experiment_planning.memory_estimate import estimate_training_bytes
from nndose import __version__
from nndose.io.raw_dataset import DatasetInfo
from nndose.plans import DOSE_MASK_PREFIX, PLANS_VERSION

MIN_FEATURE_MAP = 4
MAX_STAGES = 6
BASE_FEATURES = 32
MAX_FEATURES = 320
ENCODER_BLOCKS = (1, 3, 4, 6, 6, 6, 6)
MAX_PATCH_VOXELS = 256 ** 3
DEFAULT_DOSE_MASKS = 10


def target_spacing(fingerprint: dict) -> list[float]:
    spacings = np.asarray(fingerprint["spacings_zyx"], dtype=float)
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    if target[worst] > 3 * target.min():
        target[worst] = max(np.percentile(spacings[:, worst], 10), target.min())
    return [float(round(v, 4)) for v in target]


def topology(spacing_zyx, patch_zyx, base_features: int = BASE_FEATURES, max_features: int = MAX_FEATURES,
             encoder_blocks=ENCODER_BLOCKS) -> dict:
    """Strides, kernels and the patch rounded to what the pooling divides."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    size = np.asarray(patch_zyx, dtype=float)
    strides, kernels = [[1, 1, 1]], []
    cur_sp = spacing.copy()
    kernels.append([3 if s <= 2 * cur_sp.min() else 1 for s in cur_sp])
    while len(strides) < MAX_STAGES:
        pool = [1 if (size[a] / 2 < MIN_FEATURE_MAP or cur_sp[a] > 2 * cur_sp.min()) else 2 for a in range(3)]
        if max(pool) == 1:
            break
        strides.append(pool)
        size = size / np.asarray(pool)
        cur_sp = cur_sp * np.asarray(pool)
        kernels.append([3 if s <= 2 * cur_sp.min() else 1 for s in cur_sp])
    divisor = np.prod(np.asarray(strides), axis=0)
    patch = [int(max(d, math.ceil(p / d) * d)) for p, d in zip(patch_zyx, divisor)]
    n = len(strides)
    return {"n_stages": n, "strides": strides, "kernel_sizes": kernels,
            "features_per_stage": [min(base_features * 2 ** s, max_features) for s in range(n)],
            "n_blocks_per_stage": [int(b) for b in (list(encoder_blocks) + [encoder_blocks[-1]] * n)[:n]], "n_conv_per_stage_decoder": [1] * (n - 1),
            "patch_size_zyx": patch, "divisor_zyx": [int(d) for d in divisor]}


def _memory(net: dict, n_in: int, batch: int) -> int:
    return estimate_training_bytes(net["patch_size_zyx"], n_in, net["features_per_stage"], net["kernel_sizes"],
                                   net["strides"], net["n_blocks_per_stage"], net["n_conv_per_stage_decoder"], batch)


def plan_configuration(spacing_zyx, median_shape_zyx, n_in: int, budget_bytes: int, dataset_voxels: float,
                       max_patch_voxels: int = MAX_PATCH_VOXELS, max_batch: int | None = None, **net_options) -> dict:
    spacing = np.asarray(spacing_zyx, dtype=float)
    median = np.asarray(median_shape_zyx, dtype=float)
    patch = median.copy()
    if np.prod(patch) > max_patch_voxels:
        patch *= (max_patch_voxels / np.prod(patch)) ** (1 / 3)
    net = topology(spacing, np.maximum(patch, MIN_FEATURE_MAP), **net_options)
    while _memory(net, n_in, 2) > budget_bytes:
        p = np.asarray(net["patch_size_zyx"], dtype=float)
        axis = int(np.argmax(p / median))
        p[axis] -= net["divisor_zyx"][axis]
        if p[axis] < MIN_FEATURE_MAP * 2:
            break
        net = topology(spacing, p, **net_options)
    per_sample = _memory(net, n_in, 1) - _memory(net, n_in, 0)
    fixed = _memory(net, n_in, 0)
    batch = max(2, int((budget_bytes - fixed) // max(per_sample, 1)))
    cap = max(2, int(0.05 * dataset_voxels / np.prod(net["patch_size_zyx"])))
    batch = min(batch, cap, batch if max_batch is None else max_batch)
    return {"spacing_zyx": [float(s) for s in spacing], "median_shape_zyx": [int(round(m)) for m in median],
            "patch_size_zyx": net["patch_size_zyx"], "batch_size": int(batch),
            "network": {k: net[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides",
                                             "n_blocks_per_stage", "n_conv_per_stage_decoder")},
            "estimated_memory_gb": round(_memory(net, n_in, batch) / 2 ** 30, 3)}


def input_channels(info: DatasetInfo, beam_channels: bool = True) -> list[str]:
    return (["ct", "prescription"] + [f"organ_{o}" for o in info.organs] + ["body"]
            + (["beam_dose"] if beam_channels else []))


def plan_experiment(fingerprint: dict, info: DatasetInfo, gpu_memory_target_gb: float = 8.0,
                    plans_name: str = "nndosePlans", beam_channels: bool = True,
                    num_dose_masks: int = DEFAULT_DOSE_MASKS, max_patch_voxels: int = MAX_PATCH_VOXELS,
                    max_batch: int | None = None, **net_options) -> dict:
    """net_options: base_features, max_features, encoder_blocks (smaller networks for CPU runs);
    max_batch caps the batch size (a CPU run's small patches would otherwise fill the budget)."""
    spacing = target_spacing(fingerprint)
    shapes = [np.asarray(s) * np.asarray(sp) / np.asarray(spacing)
              for s, sp in zip(fingerprint["cropped_shapes_zyx"], fingerprint["spacings_zyx"])]
    median_shape = np.median(shapes, axis=0)
    dataset_voxels = float(sum(np.prod(s) for s in shapes))
    channels = input_channels(info, beam_channels)
    budget = int(gpu_memory_target_gb * 2 ** 30)
    opts = {"max_patch_voxels": max_patch_voxels, "max_batch": max_batch, **net_options}
    full = plan_configuration(spacing, median_shape, len(channels), budget, dataset_voxels, **opts)
    configs = {"3d_fullres": {"data_identifier": f"{plans_name}_3d_fullres", "channels": channels, **full}}
    if np.prod(median_shape) > 4 * np.prod(full["patch_size_zyx"]):
        factor = (np.prod(median_shape) / (2 * np.prod(full["patch_size_zyx"]))) ** (1 / 3)
        low_spacing = np.asarray(spacing) * factor
        low_shape = median_shape / factor
        low = plan_configuration(low_spacing, low_shape, len(channels), budget, dataset_voxels / factor ** 3, **opts)
        configs["3d_lowres"] = {"data_identifier": f"{plans_name}_3d_lowres", "channels": channels, **low}
    levels = [round((k + 1) / num_dose_masks, 4) for k in range(num_dose_masks)]
    masks = [f"{DOSE_MASK_PREFIX}{k + 1}" for k in range(num_dose_masks)]
    cascade_channels = channels + masks
    cascade = plan_configuration(spacing, median_shape, len(cascade_channels), budget, dataset_voxels, **opts)
    configs["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_fullres",
                                     "dose_mask_levels": levels, "channels": cascade_channels,
                                     "batch_size": cascade["batch_size"],
                                     "estimated_memory_gb": cascade["estimated_memory_gb"]}
    ct = fingerprint["ct_in_body"]
    return {
        "plans_version": PLANS_VERSION, "nndose_version": __version__, "plans_name": plans_name,
        "dataset_name": fingerprint["dataset"], "gpu_memory_target_gb": gpu_memory_target_gb,
        "structures": dict(info.structures), "targets": info.targets, "organs": info.organs, "body": info.body,
        "crop_margin_mm": fingerprint["crop_margin_mm"],
        "ct_normalization": {"scheme": "clip_zscore", "clip_low": ct["percentile_00_5"], "clip_high": ct["percentile_99_5"],
                             "mean": ct["mean"], "std": max(ct["std"], 1.0)},
        "dose_normalization": {"scheme": "reference_dose", "reference": "highest_prescription",
                               "note": "target = dose / reference dose; prediction multiplies back"},
        "beam_channels": {"enabled": beam_channels, "arc_step_deg": 10.0, "margin_mm": 5.0, "penumbra_mm": 3.0,
                          "pixel_mm": 2.0},
        "configurations": configs,
    }
