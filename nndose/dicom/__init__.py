"""DICOM RT at the edges: CT + RTSTRUCT + RTPLAN + RTDOSE in (nndose_convert_dicom), RTDOSE out
(nndose_export_dicom). Coordinates stay DICOM patient coordinates (LPS, mm) throughout."""
