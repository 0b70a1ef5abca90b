"""Trainer variants, each changing one hook of nndoseTrainer (chosen by name with -tr)."""
from __future__ import annotations

import torch

from nndose.errors import NndoseError
from nndose.plans import ORGAN_PREFIX
from nndose.training.losses import dvh_loss, masked_mae, masked_mse, organ_mean_loss
from nndose.training.trainer import nndoseTrainer


def organ_masks(image: torch.Tensor, channels) -> torch.Tensor:
    """The organ channels of the input (B, organs, ...) as 0/1 masks."""
    organs = [i for i, c in enumerate(channels) if c.startswith(ORGAN_PREFIX)]
    return (image[:, organs] > 0.5).float() if organs else image[:, :0]


class nndoseTrainer_MSE(nndoseTrainer):
    def compute_loss(self, pred, target, image):
        return masked_mse(pred, target, self.body_mask(image))


class nndoseTrainer_MAE_DVH(nndoseTrainer):
    """MAE + differentiable DVH term on the organs and targets each case has (DeepDoseNet)."""
    dvh_weight = 0.5
    dvh_thresholds = torch.linspace(0.0, 1.15, 24)
    dvh_width = 0.02

    def structure_masks(self, image: torch.Tensor) -> torch.Tensor:
        masks = organ_masks(image, self.channels)
        if "prescription" in self.channels:
            rx = image[:, self.channels.index("prescription")].unsqueeze(1)
            masks = torch.cat([masks, (rx > 0.5).float()], dim=1)
        return masks

    def compute_loss(self, pred, target, image):
        body = self.body_mask(image)
        dvh = dvh_loss(pred * body, target * body, self.structure_masks(image),
                       self.dvh_thresholds.to(pred.device), self.dvh_width)
        return masked_mae(pred, target, body) + self.dvh_weight * dvh


class nndoseTrainer_MAE_OrganMean(nndoseTrainer):
    """MAE + the error of each organ's mean dose inside the patch, the metric plan QA flags organs on."""
    organ_mean_weight = 1.0

    def compute_loss(self, pred, target, image):
        body = self.body_mask(image)
        organ_mean = organ_mean_loss(pred * body, target * body, organ_masks(image, self.channels))
        return masked_mae(pred, target, body) + self.organ_mean_weight * organ_mean


class nndoseTrainer_5epochs(nndoseTrainer):
    num_epochs = 5


class nndoseTrainer_CPU(nndoseTrainer):
    """A short schedule for CPU runs (the demo): 30 epochs x 20 iterations, higher learning rate."""
    num_epochs = 30
    iterations_per_epoch = 20
    val_iterations = 4
    initial_lr = 3e-3


def trainer_class(name: str) -> type[nndoseTrainer]:
    classes = {c.__name__: c for c in (nndoseTrainer, *nndoseTrainer.__subclasses__())}
    for cls in list(classes.values()):
        for sub in cls.__subclasses__():
            classes.setdefault(sub.__name__, sub)
    if name not in classes:
        raise NndoseError(f"unknown trainer {name!r} (available: {', '.join(sorted(classes))})")
    return classes[name]
