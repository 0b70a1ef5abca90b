"""nndose_finetune -d TARGET -c CONFIG -f FOLD --pretrained MODEL_FOLDER [--freeze encoder|none] [--reinit_head] [--lr_scale 0.1]"""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.errors import NndoseError
from nndose.inference.predictor import model_folder
from nndose.io.atomic import atomic_write_json
from nndose.paths import parse_dataset_id, preprocessed_root, require_dataset, results_root
from nndose.plans import PLANS_FILE, load_plans
from nndose.training.finetune import finetune_plans, load_pretrained_plans, nndoseTrainer_Finetune, pretrained_checkpoint
from nndose.training.run import resolve_device, validate_fold
from nndose.training.trainer import write_model_folder_files


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_finetune", description="Fine-tune a trained model on a new dataset (planning style).")
    ap.add_argument("-d", required=True, help="target dataset id (planned and preprocessed)")
    ap.add_argument("-c", required=True, help="configuration")
    ap.add_argument("-f", required=True, help="fold of the target dataset (0..4 or all)")
    ap.add_argument("--pretrained", required=True, type=Path, help="trained model folder (<Trainer>__<Plans>__<config>)")
    ap.add_argument("--pretrained_fold", help="fold of the pretrained model (default: the first trained one)")
    ap.add_argument("--freeze", choices=["encoder", "none"], default="encoder", help="layers kept fixed (default encoder)")
    ap.add_argument("--reinit_head", action=__import__("argparse").BooleanOptionalAction, default=True,
                    help="re-initialise the output layer (default on)")
    ap.add_argument("--lr_scale", type=float, default=0.1, help="learning rate relative to training from scratch")
    ap.add_argument("--epochs", type=int, help="epochs (default 100)")
    ap.add_argument("--iterations_per_epoch", type=int, help="iterations per epoch (default 250)")
    ap.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"], default="auto")
    args = ap.parse_args(argv)
    if args.lr_scale <= 0:
        raise NndoseError("--lr_scale must be positive")
    if args.f != "all" and not (args.f.isdigit() and 0 <= int(args.f) < 5):
        raise NndoseError(f"fold {args.f!r} must be 0..4 or 'all'")
    pre = require_dataset(preprocessed_root(), parse_dataset_id(args.d), "preprocessed")
    plans = finetune_plans(load_plans(pre / PLANS_FILE), load_pretrained_plans(args.pretrained), args.c)
    ck = pretrained_checkpoint(args.pretrained, args.pretrained_fold, "checkpoint_final.pth")
    model_dir = model_folder(results_root() / pre.name, nndoseTrainer_Finetune.__name__, plans["plans_name"], args.c)
    out = model_dir / f"fold_{args.f}"
    device = resolve_device(args.device)
    trainer = nndoseTrainer_Finetune(plans, args.c, args.f, pre, out, device, args.epochs, args.iterations_per_epoch)
    trainer.pretrained_checkpoint, trainer.freeze, trainer.reinit_head, trainer.lr_scale = ck, args.freeze, args.reinit_head, args.lr_scale
    trainer.initialize()
    write_model_folder_files(model_dir, pre, plans)
    atomic_write_json(model_dir / "finetune.json", {"pretrained": str(args.pretrained.resolve()), "checkpoint": str(ck),
                                                    "freeze": args.freeze, "reinit_head": args.reinit_head,
                                                    "lr_scale": args.lr_scale})
    trainer.run_training()
    validate_fold(model_dir, args.c, args.f, pre, device)
    print(f"{out}: done")


def main(argv=None) -> None:
    run_cli("nndose_finetune", _main, argv)
