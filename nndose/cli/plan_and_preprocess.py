"""nndose_plan_and_preprocess -d ID: fingerprint -> plan -> preprocess, with progress bars."""
from __future__ import annotations

from nndose.cli.common import OneLineParser, run_cli
from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
from nndose.experiment_planning.planner import PlannerOptions
from nndose.paths import parse_dataset_id
from nndose.plans import CONFIGURATIONS

_DEFAULTS = PlannerOptions()


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_plan_and_preprocess",
                       description="Fingerprint a raw dataset, write its plan and preprocess its training cases.")
    ap.add_argument("-d", required=True, nargs="+", help="dataset id(s)")
    ap.add_argument("-c", nargs="+", default=list(CONFIGURATIONS), choices=CONFIGURATIONS,
                    help="configurations to preprocess (default: all the plan has)")
    ap.add_argument("-np", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--gpu_memory_target", type=float, default=_DEFAULTS.gpu_memory_target_gb,
                    help="GPU memory budget in GB (default 8)")
    ap.add_argument("--verify", action="store_true", help="verify the raw dataset first")
    ap.add_argument("--no_beam_channels", action="store_true", help="plan without beam-geometry channels (ablation)")
    ap.add_argument("--beam_per_delivery", action="store_true",
                    help="one beam channel per delivery (static beams, arcs, couch-turned) when the plans mix them")
    ap.add_argument("--plan_only", action="store_true", help="fingerprint and plan, do not preprocess")
    ap.add_argument("--base_features", type=int, default=_DEFAULTS.base_features, help="features of the first stage (default 32)")
    ap.add_argument("--max_features", type=int, default=_DEFAULTS.max_features, help="feature cap (default 320)")
    ap.add_argument("--encoder_blocks", type=int, nargs="+", default=list(_DEFAULTS.encoder_blocks),
                    help="residual blocks per encoder stage (default 1 3 4 6 6 6 6)")
    ap.add_argument("--max_patch", type=int, default=_DEFAULTS.max_patch, help="patch at most this many voxels cubed (default 256)")
    ap.add_argument("--max_batch", type=int, help="batch size at most this (default: what the memory budget allows)")
    ap.add_argument("--network", default=_DEFAULTS.network, help="network class (ResEncUNet or PlainConvUNet)")
    args = ap.parse_args(argv)
    options = PlannerOptions(gpu_memory_target_gb=args.gpu_memory_target, beam_channels=not args.no_beam_channels,
                             beam_per_delivery=args.beam_per_delivery,
                             base_features=args.base_features, max_features=args.max_features,
                             encoder_blocks=tuple(args.encoder_blocks), max_patch=args.max_patch, max_batch=args.max_batch,
                             network=args.network)
    run = PreprocessingRun(configurations=tuple(args.c), num_processes=args.np, verify=args.verify, plan_only=args.plan_only)
    for d in args.d:
        plan_and_preprocess(parse_dataset_id(d), options, run)


def main(argv=None) -> None:
    run_cli("nndose_plan_and_preprocess", _main, argv)
