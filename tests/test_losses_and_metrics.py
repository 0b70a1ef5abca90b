"""Losses and metrics against hand-computed values."""
import numpy as np
import pytest
import torch

from nndose.evaluation.metrics import (conformity_index, d_tenth_cc, dice, homogeneity_index, isodose_dice,
                                       openkbp_dose_error, openkbp_dvh_points)
from nndose.training.losses import dvh_loss, masked_mae, masked_mse, organ_mean_loss, soft_dvh


def test_masked_mae_and_mse_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 10.0]).view(1, 1, 1, 1, 4)
    target = torch.tensor([1.5, 2.0, 1.0, 0.0]).view(1, 1, 1, 1, 4)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 1, 4)
    assert masked_mae(pred, target, mask).item() == pytest.approx((0.5 + 0 + 2) / 3)
    assert masked_mse(pred, target, mask).item() == pytest.approx((0.25 + 0 + 4) / 3)


def test_soft_dvh_matches_hand_histogram():
    dose = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 2.0]).view(1, 1, 1, 1, 6)
    mask = torch.tensor([1, 1, 1, 1, 1, 0.0]).view(1, 1, 1, 1, 6)
    thresholds = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    curve = soft_dvh(dose, mask, thresholds, width=1e-3)[0, 0]
    # fraction of the 5 masked voxels at or above each threshold (the 2.0 Gy voxel is outside the mask)
    assert curve.tolist() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], abs=1e-4)


def test_organ_mean_loss_is_the_error_of_the_mean_not_of_the_voxels():
    target = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.2]).view(1, 1, 1, 1, 6)
    masks = torch.zeros(1, 3, 1, 1, 6)
    masks[0, 0, ..., :4] = 1   # organ 1: voxels 0-3
    masks[0, 1, ..., 4:] = 1   # organ 2: voxels 4-5
    # organ 1: +0.3, -0.3, +0.3, -0.3 (mean error 0, though every voxel is 0.3 off); organ 2: +0.1, +0.3 (0.2);
    # organ 3 is absent and ignored: (0 + 0.2) / 2
    pred = (target + torch.tensor([0.3, -0.3, 0.3, -0.3, 0.1, 0.3]).view(1, 1, 1, 1, 6)).requires_grad_(True)
    loss = organ_mean_loss(pred, target, masks)
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    loss.backward()
    assert torch.allclose(pred.grad[0, 0, 0, 0], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.25, 0.25]))
    assert organ_mean_loss(pred, target, torch.zeros(1, 2, 1, 1, 6)).item() == 0.0


def test_dvh_loss_value_and_gradient():
    target = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]).view(1, 1, 1, 1, 5)
    pred = (target + 0.2).clone().requires_grad_(True)   # every voxel 0.2 too high
    masks = torch.ones(1, 2, 1, 1, 5)
    masks[0, 1] = 0  # an absent structure is ignored
    thresholds = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])
    loss = dvh_loss(pred, target, masks, thresholds, width=1e-3)
    # reference curve 0.8 0.6 0.4 0.2 0.0; shifted curve 1.0 0.8 0.6 0.4 0.2 -> |diff| = 0.2 at every threshold
    assert loss.item() == pytest.approx(0.2, abs=1e-3)
    smooth = dvh_loss(pred, target, masks, thresholds, width=0.05)
    smooth.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_openkbp_dose_error_uses_unmasked_numerator():
    ref = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    pred[0, 0, 0] = 4.0   # inside the body
    pred[1, 1, 1] = 2.0   # outside the body: still counted in the numerator
    body = np.zeros((2, 2, 2), bool)
    body[0] = True
    assert openkbp_dose_error(ref, pred, body) == pytest.approx(6.0 / 4)


def test_openkbp_dvh_points_by_hand():
    d = np.arange(1, 101, dtype=float)          # 100 voxels, 1..100 Gy
    pts = openkbp_dvh_points(d, "target", 8.0)
    # linear interpolation between sorted values: percentile q sits at index q/100 * 99 of 1..100 Gy
    assert pts["D_99"] == pytest.approx(1.99)                       # index 0.99
    assert pts["D_95"] == pytest.approx(5.95) and pts["D_1"] == pytest.approx(99.01)   # 4.95, 98.01
    # 8 mm^3 voxels: round(100 / 8) = 12 voxels in 0.1 cc -> percentile 88 -> index 87.12 -> 88.12 Gy
    assert openkbp_dvh_points(d, "oar", 8.0)["D_0.1_cc"] == pytest.approx(88.12)
    assert d_tenth_cc(d, 500.0) == pytest.approx(99.01)   # at least one voxel: percentile 99


def test_hi_ci_dice_by_hand():
    target = np.zeros(10, bool)
    target[:4] = True
    dose = np.array([70, 70, 70, 60, 70, 0, 0, 0, 0, 0], float)
    body = np.ones(10, bool)
    # PIV = 4 voxels >= 70 Gy, 3 of them in the 4-voxel target: CI = 9 / 16
    assert conformity_index(dose, target, 70.0, body) == pytest.approx(9 / 16)
    # D2 = percentile 98 (index 2.94 of [60, 70, 70, 70]) = 70, D98 = index 0.06 = 60.6, D50 = 70
    assert homogeneity_index(np.array([60.0, 70, 70, 70])) == pytest.approx((70 - 60.6) / 70)
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    iso = isodose_dice(dose, dose, 70.0, body)
    assert set(iso.values()) == {1.0} and list(iso)[0] == "10%" and list(iso)[-1] == "100%"
