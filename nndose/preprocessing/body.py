"""The body (external) mask, from the structure of kind body or, when a case has none, from the CT."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def body_from_ct(ct_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
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
