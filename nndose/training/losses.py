"""Losses on dose / reference dose: masked MAE and MSE inside the body, the error of the structures' mean
dose, and a differentiable DVH term.

The DVH term follows DeepDoseNet (Soomro et al.) and Nguyen et al.: for each structure s and dose
threshold t, the fraction of the structure receiving at least t is smoothed with a sigmoid,
    V_s(t) = sum_v m_s(v) * sigmoid((d(v) - t) / width) / sum_v m_s(v),
and the loss is the mean absolute difference between the predicted and reference curves (DeepDoseNet
uses absolute rather than squared deviation) over the structures each case has.
"""
from __future__ import annotations

import torch


def masked_mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def organ_mean_loss(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each structure's mean dose, over the (sample, structure) pairs whose mask
    (B, K, ...) is not empty: pred and target (B, 1, ...)."""
    b, k = masks.shape[:2]
    m = masks.reshape(b, k, -1).float()
    volume = m.sum(-1)
    present = volume > 0
    if not present.any():
        return pred.sum() * 0.0
    diff = torch.einsum("bkn,bn->bk", m, (pred - target).reshape(b, -1).float()) / volume.clamp_min(1.0)
    return diff.abs()[present].mean()


def soft_dvh(dose: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor, width: float) -> torch.Tensor:
    """Cumulative DVH (B, K, T): dose (B, 1, ...), masks (B, K, ...), thresholds (T,)."""
    b, k = masks.shape[:2]
    d = dose.reshape(b, 1, -1).float()
    m = masks.reshape(b, k, -1).float()
    above = torch.sigmoid((d.unsqueeze(-1) - thresholds.view(1, 1, 1, -1)) / width)   # (B, 1, N, T)
    volume = m.sum(-1).clamp_min(1.0)
    return torch.einsum("bkn,bnt->bkt", m, above[:, 0]) / volume.unsqueeze(-1)


def dvh_loss(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor,
             width: float = 0.02) -> torch.Tensor:
    """Mean absolute DVH difference over the (sample, structure) pairs whose mask is not empty."""
    present = masks.flatten(2).sum(-1) > 0                                               # (B, K)
    if not present.any():
        return pred.sum() * 0.0
    diff = (soft_dvh(pred, masks, thresholds, width) - soft_dvh(target, masks, thresholds, width)).abs()
    return diff.mean(-1)[present].mean()
