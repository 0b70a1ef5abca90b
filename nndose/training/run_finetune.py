"""Fine-tune a trained model on a target dataset (the body of nndose_finetune, callable from Python)."""
from __future__ import annotations

from nndose.devices import resolve_device
from nndose.io.atomic import atomic_write_json
from nndose.io.layout import FINETUNE_FILE, PLANS_FILE, fold_folder, model_folder
from nndose.paths import preprocessed_root, require_dataset, results_root
from nndose.plans import load_plans
from nndose.training.finetune import (FinetuneOptions, finetune_plans, load_pretrained_plans, nndoseTrainer_Finetune,
                                      pretrained_checkpoint)
from nndose.training.fold_lock import fold_lock
from nndose.training.run import (FoldOptions, TrainingRun, begin_fold, prepare_model_folder, remove_empty_folders,
                                 start_training)
from nndose.training.validation import validate_fold


def finetune_fold(run: TrainingRun, options: FinetuneOptions):
    """Train fold `run.fold` of the target dataset from the pretrained model; returns the fold folder."""
    pre = require_dataset(preprocessed_root(), run.dataset_id, "preprocessed")
    plans = finetune_plans(load_plans(pre / PLANS_FILE), load_pretrained_plans(options.pretrained), run.configuration)
    ck = pretrained_checkpoint(options.pretrained, options.pretrained_fold)
    model_dir = model_folder(results_root() / pre.name, nndoseTrainer_Finetune.__name__, plans.plans_name,
                             run.configuration)
    out = fold_folder(model_dir, run.fold)
    dev = resolve_device(run.device)
    try:
        with fold_lock(out):
            if begin_fold(out, run, options=FoldOptions(resume="--continue")):
                trainer = nndoseTrainer_Finetune(plans, run.configuration, run.fold, pre, out, dev, run.settings(),
                                                 finetune=options, pretrained_checkpoint=ck)
                trainer.check_inputs()
                prepare_model_folder(model_dir, pre, plans)
                atomic_write_json(model_dir / FINETUNE_FILE, {**options.to_json(), "checkpoint": str(ck)})
                start_training(trainer, run.resume)
            validate_fold(model_dir, run.configuration, run.fold, pre, dev)
    except BaseException:
        remove_empty_folders(out, model_dir, model_dir.parent)
        raise
    return out
