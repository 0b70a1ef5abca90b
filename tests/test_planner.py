"""Auto-planner: the memory estimate of the real network, topology rules, configurations and channels."""
import math

import numpy as np
import pytest
import torch

from nndose.experiment_planning.memory_estimate import (ACT_BYTES, FIXED_BYTES, PARAM_BYTES, activation_elements,
                                                        count_parameters, estimate_training_bytes,
                                                        saved_activation_elements)
from nndose.experiment_planning.planner import PlannerOptions, plan_configuration, plan_experiment, target_spacing, topology
from nndose.io.raw_dataset import DatasetInfo
from nndose.networks import build_from_architecture
from nndose.plans import Architecture

TWO_STAGES = Architecture("ResEncUNet", (4, 8), ((3, 3, 3),) * 2, ((1, 1, 1), (2, 2, 2)), (1, 1), (1,))


def test_parameter_count_is_the_built_networks_and_a_hand_count():
    # ResEncUNet(2 inputs, features 4 and 8), by hand (conv weights + biases, instance-norm affine pairs):
    # stem conv 27*2*4+4 = 220, norm 8                                          -> 228
    # stage 0 block: two convs 27*4*4+4 = 436 each, two norms 8 each            -> 888
    # stage 1 block: conv 27*4*8+8 = 872, norm 16, conv 27*8*8+8 = 1736, norm 16,
    #                1x1 projection 4*8 = 32 (no bias), norm 16                  -> 2688
    # transposed conv 8*4*2*2*2+4 = 260; decoder conv 27*8*4+4 = 868, norm 8     -> 1136
    # head 4+1 = 5.  Total 228 + 888 + 2688 + 1136 + 5 = 4945.
    built = sum(p.numel() for p in build_from_architecture(2, TWO_STAGES).parameters())
    assert built == 4945 and count_parameters(TWO_STAGES, 2) == 4945


def _saved_by_graph(output: torch.Tensor, params) -> int:
    """Elements autograd keeps for the backward pass, found by walking the graph's saved tensors (an
    independent route from the saved-tensor hooks the estimate uses); each storage counted once."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    storages, seen, stack = {}, set(), [output.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for name in dir(fn):
            if name.startswith("_saved_"):
                value = getattr(fn, name)
                for t in (value if isinstance(value, (tuple, list)) else [value]):
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in param_ptrs:
                        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        stack += [f for f, _ in fn.next_functions]
    return sum(storages.values())


def test_activation_count_matches_a_real_forward_pass_on_the_cpu():
    torch.manual_seed(0)
    net = build_from_architecture(2, TWO_STAGES)
    x = torch.randn(1, 2, 8, 12, 16, requires_grad=False)
    graph = _saved_by_graph(net(x), list(net.parameters()))
    assert graph > 8 * 12 * 16 * 4 * 5                        # several feature maps of the full patch
    assert activation_elements(TWO_STAGES, 2, (8, 12, 16)) == graph
    assert saved_activation_elements(net, (1, 2, 8, 12, 16)) == graph


def test_memory_estimate_scales_with_patch_and_batch():
    # a real CPU forward pass of this network saves 24,184 elements at 8^3 (the graph walk above):
    # 47 per voxel of feature maps and 120 of normalisation statistics
    assert activation_elements(TWO_STAGES, 2, (8, 8, 8)) == 47 * 512 + 120 == 24184
    assert activation_elements(TWO_STAGES, 2, (16, 8, 8)) == 47 * 1024 + 120
    per_sample = (24184 + 2 * 512) * 2                                          # + output and target, 2 bytes each
    assert estimate_training_bytes(TWO_STAGES, 2, (8, 8, 8), 1) == per_sample + 4945 * 16 + 2 ** 30
    assert estimate_training_bytes(TWO_STAGES, 2, (8, 8, 8), 3) - estimate_training_bytes(TWO_STAGES, 2, (8, 8, 8), 1) == 2 * per_sample


def test_target_spacing_uses_median_and_handles_anisotropy():
    fp = {"spacings_zyx": [[2.5, 1.0, 1.0], [2.5, 1.2, 1.2], [3.0, 1.1, 1.1]]}
    assert target_spacing(fp) == [2.5, 1.1, 1.1]
    fp = {"spacings_zyx": [[5.0, 1.0, 1.0]] * 5 + [[3.0, 1.0, 1.0]] * 5}
    assert target_spacing(fp)[0] == pytest.approx(3.0)  # 10th percentile for the coarse axis


def test_topology_skips_pooling_coarse_axes_and_divides_patch():
    arch, patch = topology([5.0, 1.0, 1.0], [20, 160, 160])
    strides = np.array(arch.strides)
    assert strides[1].tolist() == [1, 2, 2]            # z (5 mm) is not pooled while x/y are much finer
    assert arch.kernel_sizes[0] == (1, 3, 3)
    divisor = strides.prod(0)
    assert all(p % d == 0 for p, d in zip(patch, divisor))
    assert arch.features_per_stage[:3] == (32, 64, 128) and max(arch.features_per_stage) <= 320


def _config(budget_gb, max_batch=None):
    options = PlannerOptions(gpu_memory_target_gb=budget_gb, max_batch=max_batch)
    return plan_configuration("3d_fullres", "x", ["c"] * 20, [2.5, 4.0, 4.0], [96, 128, 128], int(budget_gb * 2 ** 30),
                              1e9, options)


def test_patch_shrinks_to_fit_a_smaller_budget():
    big, small = _config(40.0), _config(3.0)
    assert math.prod(small.patch_size_zyx) < math.prod(big.patch_size_zyx)
    assert big.patch_size_zyx == (96, 128, 128)        # the whole median image fits 40 GB
    for conf, budget in ((small, 3.0), (big, 40.0)):
        assert conf.estimated_memory_gb <= budget and conf.batch_size >= 2
    assert big.batch_size > small.batch_size
    capped = _config(40.0, max_batch=3)
    assert big.batch_size > 3 and capped.batch_size == 3 and capped.patch_size_zyx == big.patch_size_zyx


def _fingerprint(shape, spacing=(2.5, 4.0, 4.0), n=10):
    return {"dataset": "Dataset001_X", "crop_margin_mm": 10.0, "spacings_zyx": [list(spacing)] * n,
            "cropped_shapes_zyx": [list(shape)] * n,
            "ct_in_body": {"percentile_00_5": -900.0, "percentile_99_5": 1200.0, "mean": 10.0, "std": 300.0}}


def test_plan_configurations_channels_and_normalization():
    info = DatasetInfo("X", {"PTV70": "target", "PTV56": "target", "Cord": "oar", "Parotid": "oar", "Body": "body"})
    plans = plan_experiment(_fingerprint((90, 64, 115)), info)
    full = plans.configuration("3d_fullres")
    assert full.channels == ("ct", "prescription", "organ_Cord", "organ_Parotid", "body", "beam_dose")
    cascade = plans.configuration("3d_cascade_fullres")
    assert cascade.channels[-10:] == tuple(f"dose_mask_{k}" for k in range(1, 11))
    assert cascade.dose_mask_levels[0] == pytest.approx(0.1) and cascade.data_identifier == full.data_identifier
    assert cascade.patch_size_zyx == full.patch_size_zyx and cascade.network == full.network
    assert "3d_lowres" not in plans.configurations
    assert plans.ct_normalization.clip_low == -900.0 and full.network.class_name == "ResEncUNet"
    no_beam = plan_experiment(_fingerprint((90, 64, 115)), info, PlannerOptions(beam_channels=False))
    assert "beam_dose" not in no_beam.configuration("3d_fullres").channels


def test_one_beam_channel_per_delivery_when_asked_and_the_dataset_mixes_them():
    info = DatasetInfo("X", {"PTV": "target", "Cord": "oar", "Body": "body"})

    def beams(per_case):   # the beam channels planned for cases with these deliveries
        fp = {**_fingerprint((90, 64, 115), n=len(per_case)), "cases": [{"deliveries": list(d)} for d in per_case]}
        plans = plan_experiment(fp, info, PlannerOptions(beam_per_delivery=True))
        assert [c for c in plan_experiment(fp, info).configuration("3d_fullres").channels
                if c.startswith("beam")] == ["beam_dose"]   # not asked for: one channel
        return [c for c in plans.configuration("3d_fullres").channels if c.startswith("beam")]
    assert beams([["static"], ["static"]]) == ["beam_dose"]                       # one delivery: one channel
    assert beams([["arc"], ["static", "noncoplanar"]]) == ["beam_dose_static", "beam_dose_arc", "beam_dose_noncoplanar"]
    assert beams([["static"], ["arc"]]) == ["beam_dose_static", "beam_dose_arc"]
    assert beams([{}, {}]) == ["beam_dose"]    # a fingerprint from before deliveries were recorded


def test_lowres_appears_for_large_images():
    info = DatasetInfo("X", {"PTV": "target", "Body": "body"})
    plans = plan_experiment(_fingerprint((300, 512, 512), (1.0, 1.0, 1.0)), info)
    low = plans.configuration("3d_lowres")
    assert low.spacing_zyx[0] > 1.0
    assert np.prod(low.median_shape_zyx) < np.prod(plans.configuration("3d_fullres").median_shape_zyx)
