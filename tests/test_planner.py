"""Auto-planner: memory estimate pinned by hand, topology rules, configurations and channels."""
import numpy as np
import pytest

from experiment_planning.memory_estimate import FIXED_BYTES, count_parameters, estimate_training_bytes
from experiment_planning.planner import plan_configuration, plan_experiment, target_spacing, topology
from nndose.io.raw_dataset import DatasetInfo
from nndose.plans import configuration


def test_memory_estimate_matches_hand_computation():
    # patch 8^3, 2 inputs, features (4, 8), one pooling: voxels per stage 512 and 64.
    # activations: inputs+output+target 4*512 + stem 3*4*512 = 8192; stage 0 blocks 1*2*3*4*512 = 12288;
    # decoder 0 (4 + 8 + 3*4)*512 = 12288; stage 1 blocks 1*2*3*8*64 = 3072 -> 35840 elements * 2 bytes.
    # parameters: stem 27*2*4=216, blocks0 2*27*16=864, down 27*4*8=864, blocks1 2*27*64=3456,
    # transposed 8*8*4=256, decoder conv 27*2*16=864, head 4 -> 6524 * 16 bytes.
    args = ((8, 8, 8), 2, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 1], [1])
    assert count_parameters(2, [4, 8], [[3, 3, 3]] * 2, [1, 1], [1]) == 6524
    assert estimate_training_bytes(*args, batch_size=1) == 35840 * 2 + 6524 * 16 + FIXED_BYTES
    assert estimate_training_bytes(*args, batch_size=3) - estimate_training_bytes(*args, batch_size=1) == 2 * 35840 * 2


def test_target_spacing_uses_median_and_handles_anisotropy():
    fp = {"spacings_zyx": [[2.5, 1.0, 1.0], [2.5, 1.2, 1.2], [3.0, 1.1, 1.1]]}
    assert target_spacing(fp) == [2.5, 1.1, 1.1]
    fp = {"spacings_zyx": [[5.0, 1.0, 1.0]] * 5 + [[3.0, 1.0, 1.0]] * 5}
    assert target_spacing(fp)[0] == pytest.approx(3.0)  # 10th percentile for the coarse axis


def test_topology_skips_pooling_coarse_axes_and_divides_patch():
    net = topology([5.0, 1.0, 1.0], [20, 160, 160])
    strides = np.array(net["strides"])
    assert strides[1].tolist() == [1, 2, 2]            # z (5 mm) is not pooled while x/y are much finer
    assert net["kernel_sizes"][0] == [1, 3, 3]
    divisor = strides.prod(0)
    assert all(p % d == 0 for p, d in zip(net["patch_size_zyx"], divisor))
    assert net["features_per_stage"][:3] == [32, 64, 128] and max(net["features_per_stage"]) <= 320


def test_patch_shrinks_to_fit_a_smaller_budget():
    big = plan_configuration([2.5, 4.0, 4.0], [96, 128, 128], 20, 40 * 2 ** 30, 1e9)
    small = plan_configuration([2.5, 4.0, 4.0], [96, 128, 128], 20, 3 * 2 ** 30, 1e9)
    assert np.prod(small["patch_size_zyx"]) < np.prod(big["patch_size_zyx"])
    assert big["patch_size_zyx"] == [96, 128, 128]      # the whole median image fits 40 GB
    for plan, budget in ((small, 3.0), (big, 40.0)):
        assert plan["estimated_memory_gb"] <= budget and plan["batch_size"] >= 2
    assert big["batch_size"] > small["batch_size"]
    capped = plan_configuration([2.5, 4.0, 4.0], [96, 128, 128], 20, 40 * 2 ** 30, 1e9, max_batch=3)
    assert big["batch_size"] > 3 and capped["batch_size"] == 3 and capped["patch_size_zyx"] == big["patch_size_zyx"]


def _fingerprint(shape, spacing=(2.5, 4.0, 4.0), n=10):
    return {"dataset": "Dataset001_X", "crop_margin_mm": 10.0, "spacings_zyx": [list(spacing)] * n,
            "cropped_shapes_zyx": [list(shape)] * n,
            "ct_in_body": {"percentile_00_5": -900.0, "percentile_99_5": 1200.0, "mean": 10.0, "std": 300.0}}


def test_plan_configurations_channels_and_normalization():
    info = DatasetInfo("X", {"PTV70": "target", "PTV56": "target", "Cord": "oar", "Parotid": "oar", "Body": "body"})
    plans = plan_experiment(_fingerprint((90, 64, 115)), info, 8.0)
    full = configuration(plans, "3d_fullres")
    assert full["channels"] == ["ct", "prescription", "organ_Cord", "organ_Parotid", "body", "beam_dose"]
    cascade = configuration(plans, "3d_cascade_fullres")
    assert cascade["channels"][-10:] == [f"dose_mask_{k}" for k in range(1, 11)]
    assert cascade["dose_mask_levels"][0] == pytest.approx(0.1) and cascade["data_identifier"] == full["data_identifier"]
    assert cascade["patch_size_zyx"] == full["patch_size_zyx"]
    assert "3d_lowres" not in plans["configurations"]
    assert plans["dose_normalization"]["reference"] == "highest_prescription"
    assert plans["ct_normalization"]["clip_low"] == -900.0
    no_beam = plan_experiment(_fingerprint((90, 64, 115)), info, 8.0, beam_channels=False)
    assert "beam_dose" not in configuration(no_beam, "3d_fullres")["channels"]


def test_lowres_appears_for_large_images():
    info = DatasetInfo("X", {"PTV": "target", "Body": "body"})
    plans = plan_experiment(_fingerprint((300, 512, 512), (1.0, 1.0, 1.0)), info, 8.0)
    low = configuration(plans, "3d_lowres")
    assert low["spacing_zyx"][0] > 1.0
    assert np.prod(low["median_shape_zyx"]) < np.prod(configuration(plans, "3d_fullres")["median_shape_zyx"])
