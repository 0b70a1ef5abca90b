"""The body (external) mask: the structure of kind body, or, when a case has none, from the CT.

`case_body` is the one place that makes that choice; preprocessing, prediction, evaluation, the
fingerprint and the falloff baseline all call it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nndose.errors import NndoseError
from nndose.io.raw_dataset import RawCase

BODY_THRESHOLD_HU = -500.0


def body_from_ct(ct_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Largest connected component above threshold, holes filled slice by slice and in 3D."""
    mask = ct_hu > threshold_hu
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask = labels == (1 + int(np.argmax(sizes)))
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return ndimage.binary_fill_holes(mask)


def body_source(structures: dict[str, np.ndarray], body_name: str | None) -> str:
    """'structure' when the case has its body contour, else 'ct_threshold'."""
    return "structure" if body_name and body_name in structures else "ct_threshold"


def case_body(case: RawCase, body_name: str | None) -> np.ndarray:
    """The case's body mask; a case with neither a body contour nor any voxel above -500 HU is refused."""
    if body_source(case.structures, body_name) == "structure":
        return case.structures[body_name]
    body = body_from_ct(case.ct)
    if not body.any():
        raise NndoseError(f"{case.name}: no body contour and no CT voxel above {BODY_THRESHOLD_HU:g} HU "
                          f"(is the CT in HU?)")
    return body
