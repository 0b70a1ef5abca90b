"""nndose_train DATASET CONFIG FOLD [-tr TRAINER] [--device ...] [--epochs N] [--iterations_per_epoch N] [--c] [--val] [-num_gpus N]"""
from __future__ import annotations

from nndose.cli.common import OneLineParser, run_cli
from nndose.errors import NndoseError
from nndose.paths import parse_dataset_id
from nndose.training.run import train_fold


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_train", description="Train one fold of a configuration, then validate it.")
    ap.add_argument("dataset", help="dataset id")
    ap.add_argument("config", help="3d_fullres, 3d_lowres or 3d_cascade_fullres")
    ap.add_argument("fold", help="0..4 or all")
    ap.add_argument("-tr", default="nndoseTrainer", help="trainer class (e.g. nndoseTrainer_MAE_DVH, nndoseTrainer_MSE)")
    ap.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"], default="auto")
    ap.add_argument("--epochs", type=int, help="override the trainer's number of epochs")
    ap.add_argument("--iterations_per_epoch", type=int, help="override the trainer's iterations per epoch")
    ap.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    ap.add_argument("--val", action="store_true", help="only run the validation of a trained fold")
    ap.add_argument("-num_gpus", type=int, default=1, help="processes for DistributedDataParallel (default 1)")
    ap.add_argument("--exclude_sites", nargs="+", default=[], metavar="SITE",
                    help="leave these sites out of training (the model folder is named <Trainer>_without_<site>)")
    ap.add_argument("--time_budget_minutes", type=float,
                    help="fit the number of epochs (and the learning-rate schedule) into this wall-clock budget")
    args = ap.parse_args(argv)
    for name in ("epochs", "iterations_per_epoch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise NndoseError(f"--{name} must be at least 1")
    if args.time_budget_minutes is not None and args.time_budget_minutes <= 0:
        raise NndoseError("--time_budget_minutes must be positive")
    if args.num_gpus < 1:
        raise NndoseError("-num_gpus must be at least 1")
    out = train_fold(parse_dataset_id(args.dataset), args.config, args.fold, args.tr, args.device, args.epochs,
                     args.iterations_per_epoch, args.c, args.val, args.num_gpus, tuple(args.exclude_sites),
                     args.time_budget_minutes)
    print(f"{out}: done")


def main(argv=None) -> None:
    run_cli("nndose_train", _main, argv)
