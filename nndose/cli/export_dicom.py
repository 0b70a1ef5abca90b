"""nndose_export_dicom -i PRED_FOLDER -ref DICOM_FOLDER -o OUT: predictions -> RTDOSE files."""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.dicom.export import export_dicom


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_export_dicom", description="Write predicted doses as DICOM RTDOSE on the patients' CT grids.")
    ap.add_argument("-i", required=True, type=Path, help="prediction folder (<case>.nii.gz from nndose_predict)")
    ap.add_argument("-ref", required=True, type=Path, help="the patients' DICOM folder the cases were converted from")
    ap.add_argument("-o", required=True, type=Path, help="output folder (<case>/RTDOSE_<case>.dcm)")
    args = ap.parse_args(argv)
    written = export_dicom(args.i, args.ref, args.o)
    print(f"{args.o}: wrote {len(written)} RTDOSE file(s)")


def main(argv=None) -> None:
    run_cli("nndose_export_dicom", _main, argv)
