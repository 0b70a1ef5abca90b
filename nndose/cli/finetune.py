"""nndose_finetune -d TARGET -c CONFIG -f FOLD --pretrained MODEL_FOLDER [--freeze encoder|none] [--reinit_head] [--lr_scale 0.1] [--head_lr_scale 1] [--head_init least_squares|random]"""
from __future__ import annotations

import argparse
from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.devices import DEVICE_CHOICES
from nndose.paths import parse_dataset_id
from nndose.training.finetune import FinetuneOptions
from nndose.training.run import TrainingRun
from nndose.training.run_finetune import finetune_fold


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_finetune", description="Fine-tune a trained model on a new dataset (planning style).")
    ap.add_argument("-d", required=True, help="target dataset id (planned and preprocessed)")
    ap.add_argument("-c", required=True, help="configuration")
    ap.add_argument("-f", required=True, help="fold of the target dataset (0..4 or all)")
    ap.add_argument("--pretrained", required=True, type=Path, help="trained model folder (<Trainer>__<Plans>__<config>)")
    ap.add_argument("--pretrained_fold", help="fold of the pretrained model (default: the first trained one)")
    ap.add_argument("--freeze", choices=["encoder", "none"], default="encoder", help="layers kept fixed (default encoder)")
    ap.add_argument("--reinit_head", action=argparse.BooleanOptionalAction, default=True,
                    help="re-initialise the output layer (default on)")
    ap.add_argument("--head_init", choices=["least_squares", "random"], default="least_squares",
                    help="start of the re-initialised output layer: fitted to the target cases (default) or random")
    ap.add_argument("--lr_scale", type=float, default=0.1,
                    help="learning rate of the pretrained layers relative to training from scratch (default 0.1)")
    ap.add_argument("--head_lr_scale", type=float, default=1.0,
                    help="learning rate of a re-initialised output layer relative to training from scratch (default 1)")
    ap.add_argument("--epochs", type=int, help="epochs (default 100)")
    ap.add_argument("--iterations_per_epoch", type=int, help="iterations per epoch (default 250)")
    ap.add_argument("--continue", dest="resume", action="store_true", help="continue an unfinished fine-tuning run")
    ap.add_argument("--val", action="store_true", help="only validate a fine-tuned fold again")
    ap.add_argument("--overwrite", action="store_true", help="fine-tune a fold anew, deleting what its folder holds")
    ap.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    args = ap.parse_args(argv)
    options = FinetuneOptions(pretrained=args.pretrained, pretrained_fold=args.pretrained_fold, freeze=args.freeze,
                              reinit_head=args.reinit_head, lr_scale=args.lr_scale, head_lr_scale=args.head_lr_scale,
                              head_init=args.head_init)
    run = TrainingRun(dataset_id=parse_dataset_id(args.d), configuration=args.c, fold=args.f, trainer="nndoseTrainer_Finetune",
                      device=args.device, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                      resume=args.resume, validate_only=args.val, overwrite=args.overwrite)
    print(f"{finetune_fold(run, options)}: done")


def main(argv=None) -> None:
    run_cli("nndose_finetune", _main, argv)
