"""Train one fold (optionally on several GPUs with DistributedDataParallel), then validate it."""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from nndose.errors import NndoseError
from nndose.evaluation.evaluate import evaluate_folder
from nndose.inference.predictor import DosePredictor, model_folder, predict_cases
from nndose.io.atomic import atomic_write_json
from nndose.io.raw_dataset import TRAIN_DIR, load_dataset_json
from nndose.paths import find_dataset, preprocessed_root, raw_root, require_dataset, results_root
from nndose.plans import PLANS_FILE, configuration, load_plans
from nndose.preprocessing.storage import save_array
from nndose.training.trainer import OOF_DIR, write_model_folder_files
from nndose.training.trainer_variants import trainer_class

log = logging.getLogger("nndose.training")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NndoseError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NndoseError("--device mps: MPS is not available")
    return torch.device(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_fold(dataset_id: int, config: str, fold: str, trainer_name: str = "nndoseTrainer", device: str | None = None,
               epochs: int | None = None, iterations: int | None = None, resume: bool = False, validate_only: bool = False,
               num_gpus: int = 1, exclude_sites: tuple[str, ...] = (), time_budget_minutes: float | None = None) -> Path:
    """Returns the fold's output folder. With exclude_sites the model folder is named
    <Trainer>_without_<site>[_<site>]__<plans>__<config> (pass that as -tr to nndose_predict)."""
    pre = require_dataset(preprocessed_root(), dataset_id, "preprocessed")
    plans = load_plans(pre / PLANS_FILE)
    configuration(plans, config)
    cls = trainer_class(trainer_name)
    if exclude_sites:
        if configuration(plans, config).get("previous_stage") or num_gpus > 1:
            raise NndoseError("--exclude_sites works for single-process training of a first-stage configuration")
        cls = type(f"{cls.__name__}_without_{'_'.join(sorted(exclude_sites))}", (cls,),
                   {"exclude_sites": tuple(exclude_sites), "__module__": cls.__module__})
    if fold != "all" and not (fold.isdigit() and 0 <= int(fold) < 5):
        raise NndoseError(f"fold {fold!r} must be 0..4 or 'all'")
    if time_budget_minutes is not None and time_budget_minutes <= 0:
        raise NndoseError("--time_budget_minutes must be positive")
    budget_s = None if time_budget_minutes is None else 60.0 * time_budget_minutes
    model_dir = model_folder(results_root() / pre.name, cls.__name__, plans["plans_name"], config)
    out = model_dir / f"fold_{fold}"
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not validate_only:
        if (out / "checkpoint_final.pth").is_file() and resume:
            log.info("fold already trained; validating")
        elif world > 1:  # started by torchrun
            _worker(int(os.environ["RANK"]), world, None, cls, plans, config, fold, pre, out, dev.type, epochs, iterations, resume,
                    budget_s)
        elif num_gpus > 1:
            if dev.type == "cuda" and torch.cuda.device_count() < num_gpus:
                raise NndoseError(f"-num_gpus {num_gpus}: only {torch.cuda.device_count()} CUDA device(s)")
            port = _free_port()
            torch.multiprocessing.spawn(_worker, args=(num_gpus, port, cls, plans, config, fold, pre, out, dev.type,
                                                       epochs, iterations, resume, budget_s), nprocs=num_gpus, join=True)
        else:
            if (out / "checkpoint_latest.pth").is_file() and not resume:
                raise NndoseError(f"{out} holds an unfinished run; continue it with --c or delete the folder")
            trainer = cls(plans, config, fold, pre, out, dev, epochs, iterations)
            trainer.time_budget_s = budget_s
            trainer.initialize()
            if resume and (out / "checkpoint_latest.pth").is_file():
                trainer.load(out / "checkpoint_latest.pth")
            write_model_folder_files(model_dir, pre, plans)
            trainer.run_training()
    if int(os.environ.get("RANK", "0")) == 0:
        write_model_folder_files(model_dir, pre, plans)
        validate_fold(model_dir, config, fold, pre, dev)
    return out


def _worker(rank, world, port, cls, plans, config, fold, pre, out, device_type, epochs, iterations, resume, budget_s=None):
    if port is not None:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank % torch.cuda.device_count()) if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        trainer = cls(plans, config, fold, pre, out, device, epochs, iterations, rank=rank, world_size=world)
        trainer.time_budget_s = budget_s
        trainer.initialize()
        if resume and (out / "checkpoint_latest.pth").is_file():
            trainer.load(out / "checkpoint_latest.pth")
        trainer.run_training()
        dist.barrier()   # every rank has finished its collectives before any tears gloo/NCCL down
    finally:
        dist.destroy_process_group()


def validate_fold(model_dir: Path, config: str, fold: str, pre: Path, device: torch.device) -> dict | None:
    """Predict the fold's validation cases with the full predictor; write validation/summary.json."""
    if fold == "all":
        return None
    splits = json.loads((pre / "splits_final.json").read_text())
    raw = find_dataset(raw_root(), int(pre.name[7:10]))
    if raw is None:
        log.warning("raw dataset not found; fold validation skipped")
        return None
    val = splits[int(fold)]["val"]
    cases = [raw / TRAIN_DIR / c for c in val]
    out = model_dir / f"fold_{fold}" / "validation"
    predictor = DosePredictor(model_dir, config, [fold], device, use_tta=True, previous_folds=[fold])
    (model_dir / OOF_DIR).mkdir(exist_ok=True)

    def save_out_of_fold(name, normalized):  # on the preprocessed grid, for a cascade's second stage
        save_array(model_dir / OOF_DIR / f"{name}.b2nd", normalized[None])
    predict_cases(cases, out, predictor, on_normalized=save_out_of_fold)
    summary = evaluate_folder(raw / TRAIN_DIR, out, load_dataset_json(raw))
    atomic_write_json(out / "summary.json", summary)
    agg = summary["aggregate"]
    print(f"fold {fold} validation: dose score {agg['dose_score']:.3f} Gy, DVH score {agg['dvh_score']:.3f} Gy")
    return summary
