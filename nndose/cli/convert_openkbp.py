"""nndose_convert_openkbp -i FOLDER -d ID [-n NAME] [--test]: OpenKBP CSV patients -> raw dataset."""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.datasets.openkbp import convert_openkbp
from nndose.errors import NndoseError
from nndose.paths import dataset_folder_name, find_dataset, parse_dataset_id, raw_root


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_convert_openkbp", description="Convert OpenKBP pt_* folders into an nndose raw dataset.")
    ap.add_argument("-i", required=True, type=Path, help="folder holding pt_* patient folders")
    ap.add_argument("-d", required=True, help="dataset id to write (e.g. 1)")
    ap.add_argument("-n", default="OpenKBP", help="dataset name (default OpenKBP)")
    ap.add_argument("--test", action="store_true", help="put the cases in casesTs (their dose stays as the reference)")
    ap.add_argument("-np", type=int, default=2, help="processes (default 2)")
    args = ap.parse_args(argv)
    dataset_id = parse_dataset_id(args.d)
    root = raw_root()
    existing = find_dataset(root, dataset_id)
    target = root / dataset_folder_name(dataset_id, args.n)
    if existing is not None and existing != target:
        raise NndoseError(f"dataset id {dataset_id:03d} is taken by {existing.name}; use -n {existing.name.split('_', 1)[1]} or another id")
    converted = convert_openkbp(args.i, target, test=args.test, num_processes=args.np)
    print(f"{target}: converted {len(converted)} patient(s) into {'casesTs' if args.test else 'casesTr'}")


def main(argv=None) -> None:
    run_cli("nndose_convert_openkbp", _main, argv)
