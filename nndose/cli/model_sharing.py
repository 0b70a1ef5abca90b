"""nndose_export_model -d ID -c CONFIG -o model.zip and nndose_install_model model.zip [--overwrite]."""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, add_model_options, run_cli
from nndose.model_sharing import export_model, install_model
from nndose.paths import parse_dataset_id, require_dataset, results_root


def _export(argv) -> None:
    ap = OneLineParser(prog="nndose_export_model", description="Pack a trained model into a zip archive.")
    ap.add_argument("-o", required=True, type=Path, help="output .zip")
    add_model_options(ap, folds_help="folds (default: every trained fold)", checkpoint_help="checkpoint to export")
    ap.add_argument("--half", action="store_true",
                    help="float16 weights for inference only (no optimizer state): about a sixth of the size")
    args = ap.parse_args(argv)
    results = require_dataset(results_root(), parse_dataset_id(args.d), "trained")
    members = export_model(results, args.tr, args.p, args.c, args.o, args.f, args.chk, args.half)
    print(f"{args.o}: {len(members)} file(s)")


def _install(argv) -> None:
    ap = OneLineParser(prog="nndose_install_model", description="Install a model archive into $nndose_results.")
    ap.add_argument("archive", type=Path)
    ap.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")
    args = ap.parse_args(argv)
    for m in install_model(args.archive, results_root(), args.overwrite):
        print(f"installed {m}")


def export_main(argv=None) -> None:
    run_cli("nndose_export_model", _export, argv)


def install_main(argv=None) -> None:
    run_cli("nndose_install_model", _install, argv)
