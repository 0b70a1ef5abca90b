"""nndose_train DATASET CONFIG FOLD [-tr TRAINER] [--device ...] [--epochs N] [--iterations_per_epoch N] [--c] [--val] [--overwrite] [-num_gpus N]"""
from __future__ import annotations

from nndose.cli.common import OneLineParser, run_cli
from nndose.devices import DEVICE_CHOICES
from nndose.paths import parse_dataset_id
from nndose.training.run import TrainingRun, train_fold


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_train", description="Train one fold of a configuration, then validate it.")
    ap.add_argument("dataset", help="dataset id")
    ap.add_argument("config", help="3d_fullres, 3d_lowres or 3d_cascade_fullres")
    ap.add_argument("fold", help="0..4 or all")
    ap.add_argument("-tr", default="nndoseTrainer", help="trainer class (e.g. nndoseTrainer_MAE_DVH, nndoseTrainer_MSE)")
    ap.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ap.add_argument("--epochs", type=int, help="override the trainer's number of epochs")
    ap.add_argument("--iterations_per_epoch", type=int, help="override the trainer's iterations per epoch")
    ap.add_argument("--c", action="store_true", help="continue the fold's unfinished run from its latest checkpoint")
    ap.add_argument("--val", action="store_true", help="only run the validation of a trained fold")
    ap.add_argument("--overwrite", action="store_true", help="train a fold anew, deleting what its folder holds")
    ap.add_argument("-num_gpus", type=int, default=1, help="processes for DistributedDataParallel (default 1)")
    ap.add_argument("--exclude_sites", nargs="+", default=[], metavar="SITE",
                    help="leave these sites out of training (the model folder is named <Trainer>_without_<site>)")
    ap.add_argument("--time_budget_minutes", type=float,
                    help="fit the number of epochs (and the learning-rate schedule) into this wall-clock budget")
    args = ap.parse_args(argv)
    run = TrainingRun(dataset_id=parse_dataset_id(args.dataset), configuration=args.config, fold=args.fold, trainer=args.tr,
                      device=args.device, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                      resume=args.c, validate_only=args.val, num_gpus=args.num_gpus,
                      exclude_sites=tuple(args.exclude_sites), time_budget_minutes=args.time_budget_minutes,
                      overwrite=args.overwrite)
    print(f"{train_fold(run)}: done")


def main(argv=None) -> None:
    run_cli("nndose_train", _main, argv)
