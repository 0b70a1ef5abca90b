"""Augmentation with batchgeneratorsv2, physically valid for dose: every channel moves with the anatomy.

- rotation about the cranio-caudal axis only (data axis 0): it rotates the patient and the beams
  together, which the beam channel reproduces exactly;
- small isotropic scaling;
- left-right mirroring, which equals the mirrored patient with the mirrored plan, with the
  channels of paired organs (Parotid_L/_R, LeftX/RightX) swapped so that laterality stays true;
- intensity changes on the CT channel only.
The dose travels as the regression target: linear interpolation, never label handling.
"""
from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nndose.inference.mirroring import lateral_pairs, mirror_lr


class LateralMirror(BasicTransform):
    def __init__(self, pairs: list[tuple[int, int]], p: float = 0.5):
        super().__init__()
        self.pairs, self.p = pairs, p

    def get_parameters(self, **data_dict) -> dict:
        return {"flip": bool(torch.rand(1) < self.p)}

    def _apply_to_image(self, img, **params):
        return mirror_lr(img, self.pairs) if params["flip"] else img

    def _apply_to_regr_target(self, target, **params):
        return torch.flip(target, (target.ndim - 1,)) if params["flip"] else target


class OnChannels(BasicTransform):
    """Apply an image-only transform to a subset of channels."""

    def __init__(self, transform: BasicTransform, channels: list[int]):
        super().__init__()
        self.transform, self.channels = transform, channels

    def apply(self, data_dict, **params):
        img = data_dict["image"]   # a fresh patch of this sample: written in place, no copy of every channel
        img[self.channels] = self.transform(image=img[self.channels])["image"]   # list indexing copies the subset
        return data_dict


class AxialRotation:
    """Rotation angle for batchgeneratorsv2: uniform in +-max_rad about data axis 0, none about others."""

    def __init__(self, max_rad: float):
        self.max_rad = max_rad

    def __call__(self, image=None, dim=None, **kwargs) -> float:
        return float(np.random.uniform(-self.max_rad, self.max_rad)) if dim == 0 else 0.0


def training_transforms(patch_size, channels: list[str], p_rotation: float = 0.3, max_rotation_deg: float = 20.0,
                        p_scaling: float = 0.2, scaling=(0.9, 1.1), p_mirror: float = 0.5) -> ComposeTransforms:
    transforms: list[BasicTransform] = [
        SpatialTransform(tuple(patch_size), patch_center_dist_from_border=0, random_crop=False,
                         p_rotation=p_rotation, rotation=AxialRotation(np.deg2rad(max_rotation_deg)),
                         p_scaling=p_scaling, scaling=scaling, p_synchronize_scaling_across_axes=1.0,
                         mode_image="bilinear", padding_mode_image="border"),
        LateralMirror(lateral_pairs(channels), p_mirror),
    ]
    if "ct" in channels:
        ct = [channels.index("ct")]
        transforms += [OnChannels(MultiplicativeBrightnessTransform((0.9, 1.1), synchronize_channels=True), ct),
                       OnChannels(ContrastTransform(BGContrast((0.9, 1.1)), preserve_range=True,
                                                    synchronize_channels=True), ct)]
    return ComposeTransforms(transforms)
