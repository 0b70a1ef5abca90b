"""nndose_plan_and_preprocess -d ID: fingerprint -> plan -> preprocess, with progress bars."""
from __future__ import annotations

import shutil
import sys

from experiment_planning.fingerprint import compute_fingerprint
from experiment_planning.planner import plan_experiment
from nndose.cli.common import OneLineParser, run_cli
from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write, atomic_write_json
from nndose.io.raw_dataset import load_dataset_json
from nndose.paths import parse_dataset_id, preprocessed_root, raw_root, require_dataset
from nndose.plans import CONFIGURATIONS, FINGERPRINT_FILE, PLANS_FILE, configuration
from nndose.preprocessing.preprocess_dataset import preprocess_dataset
from nndose.verification import verify_dataset

CROP_MARGIN_MM = 10.0


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_plan_and_preprocess",
                       description="Fingerprint a raw dataset, write its plan and preprocess its training cases.")
    ap.add_argument("-d", required=True, nargs="+", help="dataset id(s)")
    ap.add_argument("-c", nargs="+", default=["3d_fullres", "3d_lowres", "3d_cascade_fullres"], choices=CONFIGURATIONS,
                    help="configurations to preprocess (default: all the plan has)")
    ap.add_argument("-np", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--gpu_memory_target", type=float, default=8.0, help="GPU memory budget in GB (default 8)")
    ap.add_argument("--verify", action="store_true", help="verify the raw dataset first")
    ap.add_argument("--no_beam_channels", action="store_true", help="plan without beam-geometry channels (ablation)")
    ap.add_argument("--plan_only", action="store_true", help="fingerprint and plan, do not preprocess")
    ap.add_argument("--base_features", type=int, default=32, help="features of the first stage (default 32)")
    ap.add_argument("--max_features", type=int, default=320, help="feature cap (default 320)")
    ap.add_argument("--encoder_blocks", type=int, nargs="+", default=[1, 3, 4, 6, 6, 6, 6],
                    help="residual blocks per encoder stage (default 1 3 4 6 6 6 6)")
    ap.add_argument("--max_patch", type=int, default=256, help="patch at most this many voxels cubed (default 256)")
    ap.add_argument("--max_batch", type=int, help="batch size at most this (default: what the memory budget allows)")
    args = ap.parse_args(argv)
    if args.np < 1:
        raise NndoseError("-np must be at least 1")
    if min(args.base_features, args.max_features, args.max_patch, 1 if args.max_batch is None else args.max_batch, *args.encoder_blocks) < 1:
        raise NndoseError("--base_features, --max_features, --max_patch, --max_batch and --encoder_blocks must be positive")
    if args.gpu_memory_target <= 1.0:
        raise NndoseError("--gpu_memory_target must exceed 1 GB")
    for d in args.d:
        raw = require_dataset(raw_root(), parse_dataset_id(d), "raw")
        info = load_dataset_json(raw)
        if args.verify:
            problems = verify_dataset(raw, args.np)
            if problems:
                for p in problems:
                    sys.stderr.write(f"nndose_plan_and_preprocess: {p}\n")
                raise NndoseError(f"{raw.name}: {len(problems)} problem(s) found; nothing was written")
        out = preprocessed_root() / raw.name
        fingerprint = compute_fingerprint(raw, CROP_MARGIN_MM, args.np)
        plans = plan_experiment(fingerprint, info, args.gpu_memory_target, beam_channels=not args.no_beam_channels,
                                max_patch_voxels=args.max_patch ** 3, max_batch=args.max_batch, base_features=args.base_features,
                                max_features=args.max_features, encoder_blocks=args.encoder_blocks)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / FINGERPRINT_FILE, fingerprint)
        atomic_write_json(out / PLANS_FILE, plans)
        atomic_write(out / "dataset.json", lambda p: shutil.copyfile(raw / "dataset.json", p))
        print(f"{out / PLANS_FILE}: configurations {', '.join(plans['configurations'])}")
        if args.plan_only:
            continue
        done = set()
        for name in args.c:
            if name not in plans["configurations"]:
                continue
            ident = configuration(plans, name)["data_identifier"]
            if ident in done:
                continue
            folder = preprocess_dataset(raw, info, plans, name, out, args.np)
            done.add(ident)
            print(f"{folder}: preprocessed ({name})")


def main(argv=None) -> None:
    run_cli("nndose_plan_and_preprocess", _main, argv)
