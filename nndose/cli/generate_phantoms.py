"""nndose_generate_phantoms -d ID [-n N] [--seed S] [--sites ...] [--modalities ...] [--degrade_percent P]: the
built-in phantom dataset."""
from __future__ import annotations

import json

from nndose.cli.common import OneLineParser, run_cli
from nndose.datasets.phantom_dose_engine import STYLES
from nndose.datasets.phantom_anatomy import SITES
from nndose.datasets.phantoms import MODALITIES, generate_phantom_dataset
from nndose.errors import NndoseError
from nndose.io.layout import DEGRADED_PLANS_FILE
from nndose.paths import dataset_folder_name, find_dataset, parse_dataset_id, raw_root


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_generate_phantoms", description="Generate the built-in phantom dataset.")
    ap.add_argument("-d", required=True, help="dataset id to write (e.g. 900)")
    ap.add_argument("-n", type=int, default=40, help="number of cases (default 40; 20%% go to casesTs)")
    ap.add_argument("--name", default="Phantoms", help="dataset name (default Phantoms)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--test_fraction", type=float, default=0.2, help="fraction of cases in casesTs (default 0.2)")
    ap.add_argument("--style", choices=sorted(STYLES), default="standard", help="planning style of the dose engine")
    ap.add_argument("--sites", nargs="+", default=list(SITES), metavar="SITE",
                    help=f"sites to cycle through (default all: {' '.join(SITES)})")
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES), metavar="MODALITY",
                    help=f"modalities to draw from (default all: {' '.join(MODALITIES)})")
    ap.add_argument("--degrade_percent", type=float, metavar="P",
                    help="plan each test case worse for one organ (its mean dose P %% of the prescription higher; "
                         f"a plan-QA check's truth, written to {DEGRADED_PLANS_FILE})")
    ap.add_argument("-np", type=int, default=2, help="processes (default 2)")
    args = ap.parse_args(argv)
    if args.n < 2:
        raise NndoseError("-n must be at least 2")
    if not 0.0 <= args.test_fraction < 1.0:
        raise NndoseError("--test_fraction must be in [0, 1)")
    dataset_id = parse_dataset_id(args.d)
    root = raw_root()
    existing = find_dataset(root, dataset_id)
    if existing is not None:
        raise NndoseError(f"{existing} already exists; remove it or choose another id")
    target = root / dataset_folder_name(dataset_id, args.name)
    info = generate_phantom_dataset(target, args.n, args.seed, args.test_fraction, args.style, args.np,
                                    sites=args.sites, modalities=args.modalities, degrade_percent=args.degrade_percent)
    print(f"{target}: {info.num_training} training and {args.n - info.num_training} test phantoms")
    if args.degrade_percent is not None:
        truth = json.loads((target / DEGRADED_PLANS_FILE).read_text())
        made = ", ".join(f"{name} {t['organ']} {t['increase_gy']:+.1f} Gy" for name, t in truth["degraded"].items())
        print(f"made worse: {made or 'none'} ({len(truth['as_planned'])} could not be made {args.degrade_percent:g} % "
              f"worse and stay as planned); truth in {target / DEGRADED_PLANS_FILE}")


def main(argv=None) -> None:
    run_cli("nndose_generate_phantoms", _main, argv)
