"""nndose_convert_dicom -i FOLDER -d ID [-n NAME] [--structure_map map.json] [--site SITE] [--test]"""
from __future__ import annotations

import sys
from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.dicom.convert import convert_dicom
from nndose.dicom.structure_map import load_structure_map
from nndose.errors import NndoseError
from nndose.paths import dataset_folder_name, find_dataset, parse_dataset_id, raw_root


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_convert_dicom",
                       description="Convert DICOM RT patients (CT, RTSTRUCT, RTPLAN, RTDOSE) into an nndose raw dataset. "
                                   "A patient with a problem is skipped (one line per problem); exit status 1 then.")
    ap.add_argument("-i", required=True, type=Path, help="folder holding the patients' DICOM files (any nesting)")
    ap.add_argument("-d", required=True, help="dataset id to write")
    ap.add_argument("-n", default="DICOM", help="dataset name (default DICOM)")
    ap.add_argument("--structure_map", type=Path, help="map.json: ROI names -> dataset vocabulary, targets with prescriptions")
    ap.add_argument("--site", help="treatment site written to plan.json (default: the map's 'site', else 'unspecified')")
    ap.add_argument("--test", action="store_true", help="put the cases in casesTs (RTDOSE optional)")
    ap.add_argument("-np", type=int, default=1, help="processes (default 1)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list ROIs left out")
    args = ap.parse_args(argv)
    dataset_id = parse_dataset_id(args.d)
    smap = load_structure_map(args.structure_map) if args.structure_map else None
    root = raw_root()
    existing = find_dataset(root, dataset_id)
    target = root / dataset_folder_name(dataset_id, args.n)
    if existing is not None and existing != target:
        raise NndoseError(f"dataset id {dataset_id:03d} is taken by {existing.name}; use -n {existing.name.split('_', 1)[1]} or another id")
    report = convert_dicom(args.i, target, smap, args.site, args.test, args.np)
    for line in report.problems:
        sys.stderr.write(f"nndose_convert_dicom: {line}\n")
    if args.verbose:
        for line in report.notes:
            sys.stderr.write(f"nndose_convert_dicom: note: {line}\n")
    elif report.notes:
        sys.stderr.write(f"nndose_convert_dicom: {len(report.notes)} ROI(s) left out (-v lists them)\n")
    print(f"{target}: converted {len(report.converted)} patient(s) into {'casesTs' if args.test else 'casesTr'}"
          + (f"; skipped {len(report.skipped)} with problems" if report.skipped else "")
          + (f"; {report.unreadable_files} unreadable file(s)" if report.unreadable_files else ""))
    if report.problems:
        sys.exit(1)


def main(argv=None) -> None:
    run_cli("nndose_convert_dicom", _main, argv)
