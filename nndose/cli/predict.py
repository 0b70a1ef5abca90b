"""nndose_predict -i IN -o OUT -d DATASET -c CONFIG [-f 0 1 2 3 4] [-tr TRAINER] [--disable_tta] [--save_spread] [--device ...]"""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, add_model_options, run_cli
from nndose.devices import DEVICE_CHOICES, resolve_device
from nndose.errors import NndoseError
from nndose.inference.predict_cases import predict_folder
from nndose.inference.predictor import DosePredictor
from nndose.io.layout import check_folds, model_folder
from nndose.paths import parse_dataset_id, require_dataset, results_root


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_predict", description="Predict the dose of raw cases with a trained model.")
    ap.add_argument("-i", required=True, type=Path, help="folder of raw cases (casesTs layout)")
    ap.add_argument("-o", required=True, type=Path, help="output folder for <case>.nii.gz (Gy)")
    add_model_options(ap)
    ap.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    ap.add_argument("--save_spread", action="store_true", help="also write spread/<case>.nii.gz (std across folds)")
    ap.add_argument("--step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch (0, 1]")
    ap.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ap.add_argument("--dicom_out", type=Path, help="also write each prediction as an RTDOSE here (needs --dicom_ref)")
    ap.add_argument("--dicom_ref", type=Path, help="the DICOM folder the cases were converted from (nndose_convert_dicom)")
    args = ap.parse_args(argv)
    if (args.dicom_out is None) != (args.dicom_ref is None):
        raise NndoseError("--dicom_out and --dicom_ref go together")
    if args.dicom_ref is not None and not args.dicom_ref.is_dir():
        raise NndoseError(f"{args.dicom_ref}: DICOM folder not found")
    if not 0.0 < args.step_size <= 1.0:
        raise NndoseError(f"--step_size {args.step_size}: must be in (0, 1] (a fraction of the patch)")
    folds = check_folds(args.f) if args.f else None
    results = require_dataset(results_root(), parse_dataset_id(args.d), "trained")
    predictor = DosePredictor(model_folder(results, args.tr, args.p, args.c), args.c, folds=folds,
                              device=resolve_device(args.device), use_tta=not args.disable_tta, checkpoint=args.chk,
                              step=args.step_size)
    cases = predict_folder(args.i, args.o, predictor, args.save_spread)
    print(f"{args.o}: predicted {len(cases)} case(s) with fold(s) {', '.join(predictor.folds)}")
    if args.dicom_out is not None:
        from nndose.dicom.export import export_dicom
        written = export_dicom(args.o, args.dicom_ref, args.dicom_out)
        print(f"{args.dicom_out}: wrote {len(written)} RTDOSE file(s)")


def main(argv=None) -> None:
    run_cli("nndose_predict", _main, argv)
