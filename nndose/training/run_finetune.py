"""Fine-tune a trained model on a target dataset (the body of nndose_finetune, callable from Python)."""
from __future__ import annotations

from pathlib import Path

from nndose.errors import NndoseError
from nndose.inference.predictor import model_folder
from nndose.io.atomic import atomic_write_json
from nndose.paths import preprocessed_root, require_dataset, results_root
from nndose.plans import PLANS_FILE, load_plans
from nndose.training.finetune import finetune_plans, load_pretrained_plans, nndoseTrainer_Finetune, pretrained_checkpoint
from nndose.training.run import resolve_device, validate_fold
from nndose.training.trainer import write_model_folder_files


def finetune_fold(dataset_id: int, config: str, fold: str, pretrained: Path, pretrained_fold: str | None = None,
                  freeze: str = "encoder", reinit_head: bool = True, lr_scale: float = 0.1, epochs: int | None = None,
                  iterations: int | None = None, device: str | None = None, head_lr_scale: float = 1.0,
                  head_init: str = "least_squares") -> Path:
    """Train fold `fold` of the target dataset from the pretrained model; returns the fold folder."""
    if head_init not in ("least_squares", "random"):
        raise NndoseError(f"--head_init {head_init!r}: least_squares or random")
    if lr_scale <= 0 or head_lr_scale <= 0:
        raise NndoseError("--lr_scale and --head_lr_scale must be positive")
    if fold != "all" and not (fold.isdigit() and 0 <= int(fold) < 5):
        raise NndoseError(f"fold {fold!r} must be 0..4 or 'all'")
    pretrained = Path(pretrained)
    pre = require_dataset(preprocessed_root(), dataset_id, "preprocessed")
    plans = finetune_plans(load_plans(pre / PLANS_FILE), load_pretrained_plans(pretrained), config)
    ck = pretrained_checkpoint(pretrained, pretrained_fold, "checkpoint_final.pth")
    model_dir = model_folder(results_root() / pre.name, nndoseTrainer_Finetune.__name__, plans["plans_name"], config)
    out = model_dir / f"fold_{fold}"
    dev = resolve_device(device)
    trainer = nndoseTrainer_Finetune(plans, config, fold, pre, out, dev, epochs, iterations)
    trainer.pretrained_checkpoint, trainer.freeze, trainer.reinit_head = ck, freeze, reinit_head
    trainer.lr_scale, trainer.head_lr_scale, trainer.head_init = lr_scale, head_lr_scale, head_init
    trainer.initialize()
    write_model_folder_files(model_dir, pre, plans)
    atomic_write_json(model_dir / "finetune.json", {"pretrained": str(pretrained.resolve()), "checkpoint": str(ck),
                                                    "freeze": freeze, "reinit_head": reinit_head, "lr_scale": lr_scale,
                                                    "head_lr_scale": head_lr_scale, "head_init": head_init})
    trainer.run_training()
    validate_fold(model_dir, config, fold, pre, dev)
    return out
