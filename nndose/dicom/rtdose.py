"""RTDOSE in (resampled onto the CT grid) and out (a standards-conformant RT Dose on the CT grid)."""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from nndose.dicom.compat import new_instance, save_dataset
from nndose.dicom.ct_series import grid_from_geometry
from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write
from nndose.io.volumes import Grid

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
UINT32_MAX = 2 ** 32 - 1


def dose_grid(ds: pydicom.Dataset) -> Grid:
    """The RTDOSE's own grid; GridFrameOffsetVector may be relative (first 0) or absolute positions."""
    offsets = np.asarray([float(v) for v in ds.GridFrameOffsetVector], float)
    frames = int(ds.get("NumberOfFrames", 1))
    if offsets.size != frames:
        raise NndoseError(f"RTDOSE: GridFrameOffsetVector has {offsets.size} values for {frames} frames")
    offsets = offsets - offsets[0]
    step = float(np.median(np.diff(offsets))) if frames > 1 else 1.0
    if frames > 1 and (abs(step) < 1e-6 or np.max(np.abs(np.diff(offsets) - step)) > max(0.01, 0.01 * abs(step))):
        raise NndoseError("RTDOSE: dose planes are unevenly spaced")
    return grid_from_geometry([float(v) for v in ds.ImagePositionPatient], [float(v) for v in ds.ImageOrientationPatient],
                              [float(v) for v in ds.PixelSpacing], step, (frames, int(ds.Rows), int(ds.Columns)))


def dose_values(ds: pydicom.Dataset) -> np.ndarray:
    """Dose in Gy, (frames, rows, columns)."""
    if str(ds.get("DoseUnits", "GY")).upper() != "GY":
        raise NndoseError(f"RTDOSE: DoseUnits {ds.DoseUnits} (only absolute dose in GY is usable)")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise NndoseError(f"RTDOSE: cannot decode pixels ({str(e).splitlines()[0][:100]})") from None
    arr = np.asarray(pixels, np.float64).reshape(int(ds.get("NumberOfFrames", 1)), int(ds.Rows), int(ds.Columns))
    return arr * float(ds.get("DoseGridScaling", 1.0))


def resample_dose(ds: pydicom.Dataset, target: Grid) -> np.ndarray:
    """The RTDOSE linearly resampled onto `target` (zero outside the dose grid), float32 Gy."""
    grid = dose_grid(ds)
    values = dose_values(ds)
    if grid.spacing_xyz[2] < 0:   # planes stored against the normal: flip to a right-handed grid
        values = values[::-1]
        origin = grid.index_to_physical(np.array([grid.shape_zyx[0] - 1, 0, 0], float))
        grid = Grid(grid.shape_zyx, grid.spacing_xyz[:2] + (-grid.spacing_xyz[2],), tuple(origin), grid.direction)
    image = sitk.GetImageFromArray(np.ascontiguousarray(values, np.float32))
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_xyz)
    image.SetDirection(grid.direction)
    ref = sitk.Image(target.shape_zyx[2], target.shape_zyx[1], target.shape_zyx[0], sitk.sitkFloat32)
    ref.SetSpacing(target.spacing_xyz)
    ref.SetOrigin(target.origin_xyz)
    ref.SetDirection(target.direction)
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(out), 0.0, None)


def _ds_number(v: float) -> str:
    """A decimal string of at most 16 characters."""
    for digits in (10, 8, 6):
        s = f"{v:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(v)


def build_rtdose(dose: np.ndarray, grid: Grid, ct: pydicom.Dataset, plan: pydicom.Dataset | None) -> pydicom.Dataset:
    """An RT Dose (PLAN sum, GY, PHYSICAL) on the CT grid carrying the CT's patient, study and frame of reference."""
    dose = np.asarray(dose, np.float64)
    if dose.shape != tuple(grid.shape_zyx):
        raise NndoseError(f"dose shape {dose.shape} differs from the CT grid {grid.shape_zyx}")
    if not np.all(np.isfinite(dose)):
        raise NndoseError("dose holds NaN or infinite values")
    dose = np.clip(dose, 0.0, None)
    scaling = float(_ds_number(max(float(dose.max()), 1e-6) / UINT32_MAX * (1 + 1e-9)))
    pixels = np.round(dose / scaling).astype(np.uint32)
    now = datetime.datetime.now()
    ds = new_instance(RT_DOSE_STORAGE, "RTDOSE")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID"):
        setattr(ds, key, ct.get(key, ""))
    ds.Manufacturer = "nndose"
    ds.SeriesDescription = "nndose predicted dose"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.InstanceNumber = 1
    ds.PositionReferenceIndicator = ct.get("PositionReferenceIndicator", "")
    d = grid.direction_matrix()
    ds.ImagePositionPatient = [_ds_number(v) for v in grid.origin_xyz]
    ds.ImageOrientationPatient = [_ds_number(v) for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [_ds_number(grid.spacing_xyz[1]), _ds_number(grid.spacing_xyz[0])]
    ds.SliceThickness = _ds_number(grid.spacing_xyz[2])
    ds.GridFrameOffsetVector = [_ds_number(k * grid.spacing_xyz[2]) for k in range(grid.shape_zyx[0])]
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.NumberOfFrames = grid.shape_zyx[0]
    ds.Rows, ds.Columns = grid.shape_zyx[1], grid.shape_zyx[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = _ds_number(scaling)
    ds.DoseComment = "predicted by nndose"
    if plan is not None:
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID = RT_PLAN_STORAGE
        ref.ReferencedSOPInstanceUID = plan.SOPInstanceUID
        ds.ReferencedRTPlanSequence = [ref]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_rtdose(path: Path, ds: pydicom.Dataset) -> None:
    atomic_write(path, lambda tmp: save_dataset(ds, tmp))
