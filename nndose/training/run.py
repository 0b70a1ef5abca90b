"""Train one fold (optionally on several GPUs with DistributedDataParallel), then validate it.

`TrainingRun` holds everything a run is told (the command line's options); `train_fold(run)` does it.
A fold folder is guarded: a finished fold is not trained over without --overwrite, an unfinished one
is continued only with --c, and a lock file keeps a second process off a fold being trained.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessRaisedException

from nndose.devices import resolve_device
from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write, remove_stale_temporaries
from nndose.io.layout import (CHECKPOINT_FINAL, CHECKPOINT_LATEST, LOCK_FILE, MODEL_FILES, MODEL_PLANS_FILE, PLANS_FILE, check_fold,
                              fold_folder, list_folds, model_folder, trainer_identifier)
from nndose.paths import preprocessed_root, require_dataset, results_root
from nndose.plans import Plans, load_plans, save_plans
from nndose.training.fold_lock import fold_lock
from nndose.training.trainer import TrainerSettings, nndoseTrainer
from nndose.training.trainer_variants import trainer_class
from nndose.training.validation import validate_fold

log = logging.getLogger("nndose.training")


@dataclass(frozen=True, kw_only=True)
class TrainingRun:
    """One `nndose_train` invocation."""
    dataset_id: int
    configuration: str
    fold: str
    trainer: str = "nndoseTrainer"
    device: str | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    resume: bool = False
    validate_only: bool = False
    num_gpus: int = 1
    exclude_sites: tuple[str, ...] = ()
    time_budget_minutes: float | None = None
    overwrite: bool = False

    def __post_init__(self):
        object.__setattr__(self, "fold", check_fold(self.fold))
        for name in ("epochs", "iterations_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NndoseError(f"--{name} must be at least 1")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise NndoseError("--time_budget_minutes must be positive")
        if self.num_gpus < 1:
            raise NndoseError("-num_gpus must be at least 1")
        if self.resume and self.overwrite:
            raise NndoseError("continuing a run and --overwrite (starting it again) exclude each other: choose one")

    def settings(self) -> TrainerSettings:
        budget = None if self.time_budget_minutes is None else 60.0 * self.time_budget_minutes
        return TrainerSettings(epochs=self.epochs, iterations_per_epoch=self.iterations_per_epoch, time_budget_s=budget,
                               exclude_sites=tuple(self.exclude_sites))


@dataclass(frozen=True)
class _Job:
    """What each training process needs (picklable for torch.multiprocessing.spawn)."""
    cls: type
    plans: Plans
    config: str
    fold: str
    preprocessed: Path
    out: Path
    device_type: str
    settings: TrainerSettings
    resume: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_model_plan(model_dir: Path, plans: Plans) -> None:
    """A model folder holds folds of one plan: refuse to add a fold of another (a re-plan since)."""
    path = model_dir / MODEL_PLANS_FILE
    if not path.is_file() or load_plans(path).to_json() == plans.to_json():
        return
    trained = [f for f in list_folds(model_dir, CHECKPOINT_FINAL) + list_folds(model_dir, CHECKPOINT_LATEST)]
    if trained:
        raise NndoseError(f"{model_dir}: its fold(s) {', '.join(sorted(set(trained)))} were trained with another plan than "
                          f"the preprocessed data's (re-planned since?); predict with the model as it is, or train the "
                          f"new plan into another results folder")


def prepare_model_folder(model_dir: Path, preprocessed_dir: Path, plans: Plans) -> None:
    """Write what inference needs beside the folds: the plan, dataset.json, the fingerprint."""
    check_model_plan(model_dir, plans)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_plans(model_dir / MODEL_PLANS_FILE, plans)
    for name in MODEL_FILES:
        src = Path(preprocessed_dir) / name
        if name != MODEL_PLANS_FILE and src.is_file():
            atomic_write(model_dir / name, lambda p, s=src: shutil.copyfile(s, p))


@dataclass(frozen=True)
class FoldOptions:
    """How a command spells its fold options, for its error messages."""
    resume: str = "--c"
    validate: str = "--val"


def begin_fold(out: Path, run: TrainingRun, clear: bool = True, options: FoldOptions = FoldOptions()) -> bool:
    """Whether to train (False: only validate); refuses what would mix two runs in one fold folder.
    With --overwrite (and `clear`) the fold folder is emptied first."""
    finished, unfinished = (out / CHECKPOINT_FINAL).is_file(), (out / CHECKPOINT_LATEST).is_file()
    if run.validate_only:
        if not finished:
            raise NndoseError(f"{out}: {options.validate} needs a finished fold ({CHECKPOINT_FINAL}); train it first")
        return False
    if run.overwrite:
        if clear:
            _clear_fold(out)
        return True
    if finished and not run.resume:
        raise NndoseError(f"{out} holds a finished training run; {options.validate} validates it again, "
                          f"--overwrite trains it anew")
    if finished:
        log.info("fold already trained; validating")
        return False
    if unfinished and not run.resume:
        raise NndoseError(f"{out} holds an unfinished run; continue it with {options.resume}, or start anew with --overwrite")
    if run.resume and not unfinished:
        raise NndoseError(f"{options.resume}: {out} has no run to continue ({CHECKPOINT_LATEST} not found); "
                          f"start without {options.resume}")
    return True


def train_fold(run: TrainingRun) -> Path:
    """Train and validate one fold; returns the fold folder. With exclude_sites the model folder is
    named <Trainer>_without_<site>[_<site>]__<plans>__<config> (pass that as -tr to nndose_predict)."""
    pre = require_dataset(preprocessed_root(), run.dataset_id, "preprocessed")
    plans = load_plans(pre / PLANS_FILE)
    conf = plans.configuration(run.configuration)
    cls = trainer_class(run.trainer)
    if run.exclude_sites and (conf.previous_stage or run.num_gpus > 1):
        raise NndoseError("--exclude_sites works for single-process training of a first-stage configuration")
    model_dir = model_folder(results_root() / pre.name, trainer_identifier(cls.__name__, run.exclude_sites),
                             plans.plans_name, run.configuration)
    out = fold_folder(model_dir, run.fold)
    dev = resolve_device(run.device)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    job = _Job(cls, plans, run.configuration, run.fold, pre, out, dev.type, run.settings(), run.resume)
    try:
        with fold_lock(out, enabled=rank == 0):
            if rank == 0:   # what a killed run left: half-written checkpoints, plots, plans
                remove_stale_temporaries(out)
                remove_stale_temporaries(model_dir)
            train = begin_fold(out, run, clear=rank == 0)   # every rank reads the same fold folder (shared file system)
            if train:
                # every check before the first file is written: the cases, a cascade's first stage, the plan
                job.cls(plans, run.configuration, run.fold, pre, out, dev, job.settings).check_inputs()
                if rank == 0:
                    prepare_model_folder(model_dir, pre, plans)
                _train(job, run, dev, rank, world)
            if rank == 0:
                validate_fold(model_dir, run.configuration, run.fold, pre, dev)
    except BaseException:
        remove_empty_folders(out, model_dir, model_dir.parent)
        raise
    return out


def remove_empty_folders(*folders: Path) -> None:
    """A run that failed before writing anything leaves no empty folders (innermost first)."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _train(job: _Job, run: TrainingRun, dev: torch.device, rank: int, world: int) -> None:
    if world > 1:  # started by torchrun
        _worker(rank, world, None, job)
    elif run.num_gpus > 1:
        if dev.type == "cuda" and torch.cuda.device_count() < run.num_gpus:
            raise NndoseError(f"-num_gpus {run.num_gpus}: only {torch.cuda.device_count()} CUDA device(s)")
        try:
            torch.multiprocessing.spawn(_worker, args=(run.num_gpus, _free_port(), job), nprocs=run.num_gpus, join=True)
        except ProcessRaisedException as e:   # a rank's one-line error, not its traceback
            raise NndoseError(f"a training process failed: {str(e).strip().splitlines()[-1]}") from None
    else:
        start_training(job.cls(job.plans, job.config, job.fold, job.preprocessed, job.out, dev, job.settings), run.resume)


def _clear_fold(out: Path) -> None:
    """--overwrite: a clean fold folder (but for the lock this process holds)."""
    for entry in out.iterdir():
        if entry.name != LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def start_training(trainer: nndoseTrainer, resume: bool) -> None:
    trainer.initialize()
    if resume:
        trainer.load(trainer.output_dir / CHECKPOINT_LATEST)
    trainer.run_training()


def _worker(rank: int, world: int, port: int | None, job: _Job) -> None:
    if port is not None:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if job.device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank % torch.cuda.device_count()) if job.device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        trainer = job.cls(job.plans, job.config, job.fold, job.preprocessed, job.out, device, job.settings,
                          rank=rank, world_size=world)
        start_training(trainer, job.resume)
        dist.barrier()   # every rank has finished its collectives before any tears gloo/NCCL down
    finally:
        dist.destroy_process_group()
