"""A small synthetic DICOM RT patient written with pydicom, for tests, benchmarks and trying the
DICOM commands: CT series, RTSTRUCT (ellipse body, a sphere PTV, a ring with a hole, two separate
islands, a couch), RTPLAN (two static beams and an arc), RTDOSE on its own coarser grid holding an
analytic linear dose."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from nndose.dicom.compat import new_instance, save_dataset

CT_SHAPE = (20, 40, 48)                 # z, y, x
CT_SPACING = (2.0, 2.5, 3.0)            # x, y, z  (PixelSpacing = [2.5, 2.0])
CT_ORIGIN = (-47.0, -48.75, -28.5)
DOSE_SHAPE = (9, 22, 22)
DOSE_SPACING = (4.0, 4.0, 6.0)
DOSE_ORIGIN = (-44.0, -46.0, -24.0)
SCALING = 1e-4
PTV_CENTER, PTV_RADIUS = (6.0, 0.0, 0.0), 12.0
RING_CENTER, RING_OUTER, RING_INNER = (-18.0, 12.0), 10.0, 5.0
ISLANDS = ((-26.0, -18.0), (24.0, -18.0))
ISLAND_RADIUS = 6.0
BODY_AXES = (44.0, 40.0)


def analytic_dose(x, y, z):
    return 40.0 + 0.3 * x + 0.2 * y + 0.1 * z


def ct_points():
    """Physical (x, y, z) of every CT voxel centre, arrays shaped (z, y, x)."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in CT_SHAPE], indexing="ij")
    return CT_ORIGIN[0] + x * CT_SPACING[0], CT_ORIGIN[1] + y * CT_SPACING[1], CT_ORIGIN[2] + z * CT_SPACING[2]


def analytic_masks():
    x, y, z = ct_points()
    return {"PTV70": (x - PTV_CENTER[0]) ** 2 + (y - PTV_CENTER[1]) ** 2 + (z - PTV_CENTER[2]) ** 2 <= PTV_RADIUS ** 2,
            "Ring": ((x - RING_CENTER[0]) ** 2 + (y - RING_CENTER[1]) ** 2 <= RING_OUTER ** 2)
            & ((x - RING_CENTER[0]) ** 2 + (y - RING_CENTER[1]) ** 2 > RING_INNER ** 2),
            "Islands": np.any([(x - cx) ** 2 + (y - cy) ** 2 <= ISLAND_RADIUS ** 2 for cx, cy in ISLANDS], axis=0),
            "Body": (x / BODY_AXES[0]) ** 2 + (y / BODY_AXES[1]) ** 2 <= 1.0}


STRUCTURE_MAP = {"site": "pelvis", "structures": {
    "PTV_7000": {"name": "PTV70", "kind": "target"},
    "Ring ORGAN": "Ring", "parotids": "Islands",
    "External": {"name": "Body", "kind": "body"}}}


def _base(modality: str, sop_class: str, ids: dict) -> pydicom.Dataset:
    ds = new_instance(sop_class, modality)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^" + ids["patient"], ids["patient"], "19600101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = ids["study"], "20260101", "120000", "1"
    ds.SeriesInstanceUID = generate_uid()
    return ds


def _circle(cx, cy, r, z, n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)], 1)


def _ellipse(a, b, z, n=64):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t), np.full(n, z)], 1)


def write_patient(folder: Path, patient: str = "P001", drop_ct_slice: int | None = None, rtstruct: bool = True,
                  beams: bool = True, dose_frame_uid: str | None = None, absolute_offsets: bool = False,
                  prescription: bool = True) -> dict:
    """Write the patient's files under folder (CT in a sub-folder); returns the UIDs used."""
    folder = Path(folder)
    ids = {"patient": patient, "study": generate_uid(), "frame": generate_uid()}
    (folder / "CT").mkdir(parents=True, exist_ok=True)
    x, y, _ = ct_points()
    hu = np.where(analytic_masks()["Body"], 40.0, -1000.0)
    series = generate_uid()
    for k in np.random.default_rng(0).permutation(CT_SHAPE[0]):   # files in shuffled order
        if k == drop_ct_slice:
            continue
        ds = _base("CT", "1.2.840.10008.5.1.4.1.1.2", ids)
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.InstanceNumber = series, ids["frame"], int(k) + 1
        ds.ImagePositionPatient = [CT_ORIGIN[0], CT_ORIGIN[1], CT_ORIGIN[2] + k * CT_SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [CT_SPACING[1], CT_SPACING[0]], CT_SPACING[2]
        ds.Rows, ds.Columns = CT_SHAPE[1], CT_SHAPE[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu[k] + 1024).astype(np.uint16).tobytes()
        save_dataset(ds, folder / "CT" / f"CT.{k:03d}.dcm")
    ids["ct_z"] = [CT_ORIGIN[2] + k * CT_SPACING[2] for k in range(CT_SHAPE[0])]
    ss = _base("RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3", ids)
    ref = pydicom.Dataset()
    ref.FrameOfReferenceUID = ids["frame"]
    ss.ReferencedFrameOfReferenceSequence = [ref]
    rois = [(1, "External", "EXTERNAL"), (2, "PTV_7000", "PTV"), (3, "Ring ORGAN", "ORGAN"), (4, "Parotids", "ORGAN"),
            (5, "Couch", "SUPPORT")]
    ss.StructureSetROISequence, ss.ROIContourSequence, ss.RTROIObservationsSequence = [], [], []
    for number, name, kind in rois:
        r = pydicom.Dataset()
        r.ROINumber, r.ROIName, r.ReferencedFrameOfReferenceUID = number, name, ids["frame"]
        ss.StructureSetROISequence.append(r)
        o = pydicom.Dataset()
        o.ObservationNumber, o.ReferencedROINumber, o.RTROIInterpretedType = number, number, kind
        ss.RTROIObservationsSequence.append(o)
        contours = []
        for z in ids["ct_z"]:
            if name == "External":
                polys = [_ellipse(*BODY_AXES, z)]
            elif name == "PTV_7000":
                dz2 = PTV_RADIUS ** 2 - (z - PTV_CENTER[2]) ** 2
                polys = [_circle(PTV_CENTER[0], PTV_CENTER[1], np.sqrt(dz2), z, 96)] if dz2 > 1.0 else []
            elif name == "Ring ORGAN":
                polys = [_circle(*RING_CENTER, RING_OUTER, z), _circle(*RING_CENTER, RING_INNER, z)]
            elif name == "Parotids":
                polys = [_circle(cx, cy, ISLAND_RADIUS, z) for cx, cy in ISLANDS]
            else:
                polys = [np.array([[-40, 42, z], [40, 42, z], [40, 46, z], [-40, 46, z]], float)]
            for p in polys:
                c = pydicom.Dataset()
                c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(p)
                c.ContourData = [round(float(v), 4) for v in p.ravel()]
                contours.append(c)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber, rc.ContourSequence = number, contours
        ss.ROIContourSequence.append(rc)
    if rtstruct:
        save_dataset(ss, folder / "RS.dcm")
    plan = _base("RTPLAN", "1.2.840.10008.5.1.4.1.1.481.5", ids)
    plan.FrameOfReferenceUID = ids["frame"]
    plan.RTPlanLabel = "synthetic"
    iso = [float(v) for v in PTV_CENTER]
    plan.BeamSequence = []
    specs = [("static0", 0.0, "NONE", [0.0, 0.0]), ("static90", 90.0, "NONE", [90.0, 90.0]),
             ("arc", 181.0, "CW", [181.0, 270.0, 0.0, 90.0, 179.0])] if beams else []
    for i, (name, g, rot, gantries) in enumerate(specs):
        b = pydicom.Dataset()
        b.BeamNumber, b.BeamName, b.TreatmentDeliveryType = i + 1, name, "TREATMENT"
        b.TreatmentMachineName, b.SourceAxisDistance, b.RadiationType = "SynthLinac", 950.0, "PHOTON"
        b.BeamType = "DYNAMIC" if rot != "NONE" else "STATIC"
        cps = []
        for j, ga in enumerate(gantries):
            cp = pydicom.Dataset()
            cp.ControlPointIndex, cp.GantryAngle = j, ga
            if j == 0:
                cp.GantryRotationDirection, cp.NominalBeamEnergy = rot, 10
                cp.PatientSupportAngle = 10.0 if rot != "NONE" else 0.0
                cp.BeamLimitingDeviceAngle = 30.0 if rot != "NONE" else 0.0
                cp.IsocenterPosition = iso
            cps.append(cp)
        b.ControlPointSequence, b.NumberOfControlPoints = cps, len(cps)
        plan.BeamSequence.append(b)
    setup = pydicom.Dataset()
    setup.BeamNumber, setup.BeamName, setup.TreatmentDeliveryType = 9, "setup", "SETUP"
    plan.BeamSequence.append(setup)
    if prescription:
        dr = pydicom.Dataset()
        dr.DoseReferenceNumber, dr.DoseReferenceStructureType, dr.DoseReferenceType = 1, "VOLUME", "TARGET"
        dr.ReferencedROINumber, dr.TargetPrescriptionDose = 2, 70.0
        plan.DoseReferenceSequence = [dr]
    fg = pydicom.Dataset()
    fg.FractionGroupNumber, fg.NumberOfFractionsPlanned = 1, 35
    plan.FractionGroupSequence = [fg]
    save_dataset(plan, folder / "RP.dcm")
    ids["plan_uid"] = plan.SOPInstanceUID
    dose = _base("RTDOSE", "1.2.840.10008.5.1.4.1.1.481.2", ids)
    dose.FrameOfReferenceUID = dose_frame_uid or ids["frame"]
    dose.ImagePositionPatient, dose.ImageOrientationPatient = list(DOSE_ORIGIN), [1, 0, 0, 0, 1, 0]
    dose.PixelSpacing = [DOSE_SPACING[1], DOSE_SPACING[0]]
    offsets = [k * DOSE_SPACING[2] for k in range(DOSE_SHAPE[0])]
    dose.GridFrameOffsetVector = [DOSE_ORIGIN[2] + o for o in offsets] if absolute_offsets else offsets
    dose.NumberOfFrames, dose.Rows, dose.Columns = DOSE_SHAPE
    dose.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    dose.SamplesPerPixel, dose.PhotometricInterpretation = 1, "MONOCHROME2"
    dose.BitsAllocated, dose.BitsStored, dose.HighBit, dose.PixelRepresentation = 32, 32, 31, 0
    dose.DoseUnits, dose.DoseType, dose.DoseSummationType, dose.DoseGridScaling = "GY", "PHYSICAL", "PLAN", SCALING
    r = pydicom.Dataset()
    r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = plan.SOPClassUID, plan.SOPInstanceUID
    dose.ReferencedRTPlanSequence = [r]
    z, yy, xx = np.meshgrid(*[np.arange(n) for n in DOSE_SHAPE], indexing="ij")
    values = analytic_dose(DOSE_ORIGIN[0] + xx * DOSE_SPACING[0], DOSE_ORIGIN[1] + yy * DOSE_SPACING[1],
                           DOSE_ORIGIN[2] + z * DOSE_SPACING[2])
    dose.PixelData = np.round(values / SCALING).astype(np.uint32).tobytes()
    save_dataset(dose, folder / "RD.dcm")
    return ids


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
