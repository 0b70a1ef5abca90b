"""nndose_export_openkbp -i PRED_FOLDER -o OUT: predictions -> OpenKBP submission CSVs (pt_N.csv)."""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.datasets.openkbp import export_openkbp


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_export_openkbp", description="Write predicted doses as OpenKBP submission CSVs.")
    ap.add_argument("-i", required=True, type=Path, help="folder of <case>.nii.gz predictions on OpenKBP grids")
    ap.add_argument("-o", required=True, type=Path, help="output folder for <case>.csv")
    args = ap.parse_args(argv)
    cases = export_openkbp(args.i, args.o)
    print(f"{args.o}: wrote {len(cases)} submission file(s)")


def main(argv=None) -> None:
    run_cli("nndose_export_openkbp", _main, argv)
