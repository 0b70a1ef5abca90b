"""Creating and writing DICOM files the same way under pydicom 2.4 and 3.x."""
from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])


def new_instance(sop_class: str, modality: str) -> pydicom.Dataset:
    """An empty SOP instance of the class, with file meta for explicit VR little endian and fresh UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    return ds


def save_dataset(ds: pydicom.Dataset, path: Path) -> None:
    """Write ds with its file meta (explicit VR little endian) as a Part-10 file."""
    if PYDICOM_MAJOR >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
