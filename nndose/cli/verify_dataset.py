"""nndose_verify_dataset -d ID: check a raw dataset; one line per problem, non-zero exit on any."""
from __future__ import annotations

import sys

from nndose.cli.common import OneLineParser, run_cli
from nndose.errors import NndoseError
from nndose.paths import parse_dataset_id, raw_root, require_dataset
from nndose.verification import verify_dataset


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_verify_dataset", description="Check every case of a raw dataset.")
    ap.add_argument("-d", required=True, help="dataset id (e.g. 1 or 001)")
    ap.add_argument("-np", type=int, default=2, help="processes (default 2)")
    args = ap.parse_args(argv)
    folder = require_dataset(raw_root(), parse_dataset_id(args.d), "raw")
    problems = verify_dataset(folder, args.np)
    if problems:
        for p in problems:
            sys.stderr.write(f"nndose_verify_dataset: {p}\n")
        raise NndoseError(f"{folder.name}: {len(problems)} problem(s) found")
    print(f"{folder.name}: all cases passed verification")


def main(argv=None) -> None:
    run_cli("nndose_verify_dataset", _main, argv)
