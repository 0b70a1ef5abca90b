"""RTSTRUCT: ROI names, interpreted types, and contours rasterized onto the CT grid.

Each closed planar contour is filled on the CT slice it lies on (pixel centres inside the polygon,
scikit-image); contours on one slice are combined with exclusive-or, so a contour inside another
is a hole and separate contours are separate islands.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
from skimage.draw import polygon

from nndose.errors import NndoseError
from nndose.io.volumes import Grid


@dataclass(frozen=True)
class Roi:
    number: int
    name: str
    interpreted_type: str   # EXTERNAL, PTV, CTV, GTV, ORGAN, ... ('' when absent)


def read_rois(ds: pydicom.Dataset) -> dict[int, Roi]:
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
             for o in ds.get("RTROIObservationsSequence", [])}
    return {int(r.ROINumber): Roi(int(r.ROINumber), str(r.ROIName).strip(), types.get(int(r.ROINumber), ""))
            for r in ds.get("StructureSetROISequence", [])}


def referenced_frame_of_reference(ds: pydicom.Dataset) -> str:
    refs = ds.get("ReferencedFrameOfReferenceSequence", [])
    return str(refs[0].FrameOfReferenceUID) if refs else str(ds.get("FrameOfReferenceUID", ""))


def rasterize_roi(ds: pydicom.Dataset, roi_number: int, grid: Grid) -> np.ndarray:
    """Binary mask (z, y, x) of one ROI on the grid; raises when a contour lies off the CT slices."""
    mask = np.zeros(grid.shape_zyx, bool)
    for rc in ds.get("ROIContourSequence", []):
        if int(rc.ReferencedROINumber) != roi_number:
            continue
        for contour in rc.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) not in ("CLOSED_PLANAR", ""):
                continue
            points = np.asarray([float(v) for v in contour.ContourData], float).reshape(-1, 3)
            if len(points) < 3:
                continue
            idx = grid.physical_to_index(points)          # (n, 3) in (z, y, x)
            z = float(np.mean(idx[:, 0]))
            k = int(round(z))
            if abs(z - k) > 0.25 or not 0 <= k < grid.shape_zyx[0]:
                raise NndoseError(f"a contour of ROI {roi_number} lies between or outside the CT slices "
                                  f"(slice index {z:.2f})")
            rr, cc = polygon(idx[:, 1], idx[:, 2], grid.shape_zyx[1:])
            filled = np.zeros(grid.shape_zyx[1:], bool)
            filled[rr, cc] = True
            mask[k] ^= filled
    return mask
