"""nndoseTrainer: the default training recipe. Variants subclass it and override one hook.

Defaults (per epoch: 250 iterations; 300 epochs on a GPU): AdamW, learning rate 1e-3 with
polynomial decay (exponent 0.9), weight decay 1e-4, masked MAE on dose / reference dose inside the
body, gradient clipping at 12, mixed precision (fp16 + GradScaler) and torch.compile on CUDA, fp32
eager mode on the CPU. The plan's training recipe (`Plans.training`, what the planner chose for the
machine) may change the precision (bf16), the memory format (channels_last_3d), compilation, the
peak learning rate, a linear warm-up, the decay (poly or cosine) and an exponential moving average
of the weights; a trainer variant that sets one of these itself keeps its value. Each epoch ends with validation patches of the fold's validation
cases; their MAE in Gy, smoothed with an exponential moving average (0.9), picks checkpoint_best.
Checkpoints (latest every epoch, best, final) are written atomically, hold only tensors and plain
values (torch.load(weights_only=True)), and `--c` resumes from the latest. One training and one
validation loader live for the whole run (workers start once); every batch is drawn from a stream
seeded by (seed, batch index), so a resumed run repeats the batches a killed one would have drawn.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from nndose.errors import NndoseError
from nndose.io.checkpoints import load_checkpoint, save_checkpoint
from nndose.io.layout import (ALL_FOLD, CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST, OOF_DIR, PROGRESS_PLOT,
                              SPLITS_FILE, TRAINING_LOG, previous_stage_folder)
from nndose.networks import build_network
from nndose.plans import Plans
from nndose.preprocessing.channels import channel_pad_values
from nndose.preprocessing.preprocess_dataset import check_data_matches_plan
from nndose.preprocessing.storage import array_path, list_preprocessed_cases, load_properties
from nndose.training.augmentation import training_transforms
from nndose.training.data import PatchDataset
from nndose.training.losses import masked_mae
from nndose.training.progress import plot_progress
from nndose.training.splits import fold_cases, load_or_create_splits


@dataclass(frozen=True, kw_only=True)
class TrainerSettings:
    """What a run may change about a trainer's schedule without a new trainer class."""
    epochs: int | None = None                 # None: the trainer's num_epochs
    iterations_per_epoch: int | None = None   # None: the trainer's iterations_per_epoch
    time_budget_s: float | None = None        # fit the number of epochs into this wall-clock budget
    num_workers: int | None = None            # loader workers (None: default_num_workers)
    exclude_sites: tuple[str, ...] = ()       # leave-site-out: never trained nor validated on


# recipe field of the plan -> trainer attribute it sets
RECIPE_ATTRIBUTES = {"amp_dtype": "amp_dtype", "channels_last": "channels_last", "compile": "compile_on_cuda",
                     "initial_lr": "initial_lr", "warmup_epochs": "warmup_epochs", "lr_schedule": "lr_schedule",
                     "ema_decay": "weight_ema_decay"}


class nndoseTrainer:
    initial_lr = 1e-3
    warmup_epochs = 0
    lr_schedule = "poly"      # or "cosine"
    weight_decay = 1e-4
    num_epochs = 300
    iterations_per_epoch = 250
    val_iterations = 25
    grad_clip = 12.0
    ema_momentum = 0.9        # smoothing of the validation MAE that picks checkpoint_best
    weight_ema_decay = 0.0    # > 0: an exponential moving average of the weights is what is validated and saved
    amp_dtype = "float16"     # mixed precision on CUDA (float16 with loss scaling, or bfloat16)
    channels_last = False     # the channels_last_3d memory format
    seed = 12345
    compile_on_cuda = True  # torch.compile the training model on CUDA (environment nndose_compile=0 turns it off)

    def __init__(self, plans: Plans, config_name: str, fold: str | int, preprocessed_dir: Path, output_dir: Path,
                 device: torch.device, settings: TrainerSettings = TrainerSettings(), rank: int = 0, world_size: int = 1):
        self.plans, self.config_name, self.fold = plans, config_name, str(fold)
        self.conf = plans.configuration(config_name)
        self.preprocessed_dir = Path(preprocessed_dir)
        self.data_dir = self.preprocessed_dir / self.conf.data_identifier
        self.output_dir = Path(output_dir)
        self.device = device
        self.settings = settings
        self.num_epochs = settings.epochs or self.num_epochs
        self.epoch_cap = self.num_epochs   # a time budget may shorten the schedule, and lengthen it back up to this
        self.time_budget_s = settings.time_budget_s
        self.iterations_per_epoch = settings.iterations_per_epoch or self.iterations_per_epoch
        self.val_iterations = max(1, min(self.val_iterations, self.iterations_per_epoch))
        self.exclude_sites = tuple(settings.exclude_sites)
        self.rank, self.world_size = rank, world_size
        self.num_workers = settings.num_workers if settings.num_workers is not None else default_num_workers(device, world_size)
        self.channels = list(self.conf.channels)
        self.body_channel = self.channels.index("body")
        self._apply_recipe(plans.training.chosen())
        self.amp = device.type == "cuda"
        self.stage1_dir = None
        if self.conf.previous_stage:  # cascade: stage-1 predictions made out of fold
            self.stage1_dir = previous_stage_folder(self.output_dir.parent, self.conf.previous_stage) / OOF_DIR
        self.log = {"train_loss": [], "val_mae_gy": [], "val_mae_ema_gy": [], "lr": [], "epoch_time_s": []}
        self.epoch = 0
        self.best_ema = float("inf")

    def _apply_recipe(self, recipe: dict) -> None:
        """The plan's recipe, where the trainer class does not set the value itself."""
        for field_name, value in recipe.items():
            attribute = RECIPE_ATTRIBUTES[field_name]
            if getattr(type(self), attribute) is getattr(nndoseTrainer, attribute):
                setattr(self, attribute, value)

    @property
    def amp_torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp_dtype == "bfloat16" else torch.float16

    # ----- hooks a variant may override --------------------------------------------------------
    def build_network(self) -> torch.nn.Module:
        return build_network(self.conf)

    def compute_loss(self, pred: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return masked_mae(pred, target, self.body_mask(image))

    def configure_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)

    def lr_at(self, epoch: int) -> float:
        """Linear warm-up to the peak over warmup_epochs, then poly (exponent 0.9) or cosine decay to 0."""
        if epoch < self.warmup_epochs:
            return self.initial_lr * (epoch + 1) / (self.warmup_epochs + 1)
        t = (epoch - self.warmup_epochs) / max(1, self.num_epochs - self.warmup_epochs)
        if self.lr_schedule == "cosine":
            return self.initial_lr * 0.5 * (1 + math.cos(math.pi * t))
        return self.initial_lr * (1 - t) ** 0.9

    def get_training_transforms(self):
        return training_transforms(self.conf.patch_size_zyx, self.channels)

    # ----- helpers -----------------------------------------------------------------------------
    def body_mask(self, image: torch.Tensor) -> torch.Tensor:
        return (image[:, self.body_channel: self.body_channel + 1] > 0.5).float()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _cases(self) -> tuple[list[str], list[str]]:
        cases = list_preprocessed_cases(self.data_dir)
        if not cases:
            raise NndoseError(f"{self.data_dir}: no preprocessed cases (run nndose_plan_and_preprocess)")
        check_data_matches_plan(self.data_dir, self.plans, self.conf)
        props = {c: load_properties(self.data_dir, c) for c in cases}
        keep = [c for c in cases if props[c].get("site") not in self.exclude_sites]
        if not keep:
            raise NndoseError(f"excluding {', '.join(self.exclude_sites)} leaves no case to train on")
        if self.fold == ALL_FOLD:  # everything trains; a fifth of it also gives the validation MAE
            return keep, keep[:: 5]
        patients = {c: str(props[c].get("patient_id") or c) for c in cases}
        splits = load_or_create_splits(self.preprocessed_dir / SPLITS_FILE, cases, patients)
        train, val = fold_cases(splits, self.fold, cases)
        return [c for c in train if c in keep], [c for c in val if c in keep] or keep[:: 5]

    def _check_stage1(self, cases: list[str]) -> None:
        missing = [c for c in cases if not array_path(self.stage1_dir, c).is_file()]
        if missing:
            raise NndoseError(f"{self.config_name} trains on out-of-fold predictions of {self.conf.previous_stage}: "
                              f"{len(missing)} case(s) lack one in {self.stage1_dir} (train all five folds of "
                              f"{self.conf.previous_stage} with {type(self).__name__} first)")

    def _loader(self, cases, transforms, seed, first_batch: int = 0, num_workers: int | None = None) -> DataLoader:
        batch = max(1, self.conf.batch_size // self.world_size)
        ds = PatchDataset(self.data_dir, cases, self.conf.patch_size_zyx,
                          channel_pad_values(self.channels, self.plans.ct_normalization), seed, transforms,
                          rank=self.rank, stage1_dir=self.stage1_dir,
                          dose_mask_levels=self.conf.dose_mask_levels if self.stage1_dir else (),
                          batch_size=batch, first_batch=first_batch)
        workers = self.num_workers if num_workers is None else num_workers
        return DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None)

    def check_inputs(self) -> None:
        """Everything training needs that can be wrong, checked before anything is built or written:
        the preprocessed cases match the plan, the split, a cascade's first-stage predictions."""
        self.train_cases, self.val_cases = self._cases()
        if self.stage1_dir is not None:
            self._check_stage1(self.train_cases + self.val_cases)

    def initialize(self) -> None:
        torch.manual_seed(self.seed)
        self.check_inputs()
        self.network = self.build_network().to(self.device)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.averaged = copy.deepcopy(self.network).requires_grad_(False) if self.weight_ema_decay > 0 else None
        self.model = self.network
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)
        if self.device.type == "cuda" and self.compile_on_cuda and os.environ.get("nndose_compile", "1") != "0":
            self.model = torch.compile(self.model)
        self.optimizer = self.configure_optimizer([p for p in self.network.parameters() if p.requires_grad])
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.amp_dtype == "float16" else None

    @property
    def evaluated_network(self) -> torch.nn.Module:
        """What validation measures and inference gets: the weights' moving average when there is one."""
        return self.averaged if self.averaged is not None else self.network

    @torch.no_grad()
    def update_average(self) -> None:
        """averaged = d * averaged + (1 - d) * current, after every optimizer step."""
        if self.averaged is None:
            return
        for avg, cur in zip(self.averaged.parameters(), self.network.parameters()):
            avg.mul_(self.weight_ema_decay).add_(cur.detach(), alpha=1 - self.weight_ema_decay)
        for avg, cur in zip(self.averaged.buffers(), self.network.buffers()):
            avg.copy_(cur)

    def _input(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else tensor

    # ----- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """'network' holds the weights inference uses (the moving average when there is one),
        'network_train' the optimizer's own when they differ."""
        extra = {"network_train": self.network.state_dict()} if self.averaged is not None else {}
        return {"network": self.evaluated_network.state_dict(), **extra, "optimizer": self.optimizer.state_dict(),
                "grad_scaler": self.scaler.state_dict() if self.scaler else {}, "epoch": self.epoch,
                "log": self.log, "best_ema": self.best_ema, "trainer": type(self).__name__,
                "config": self.config_name, "plans_name": self.plans.plans_name, "channels": self.channels}

    def save(self, name: str) -> None:
        if self.is_main:
            save_checkpoint(self.output_dir / name, self.state())

    def load(self, path: Path) -> None:
        ck = load_checkpoint(path, map_location=self.device)
        if list(ck["channels"]) != self.channels:
            raise NndoseError(f"{path}: checkpoint channels differ from the plan's {self.config_name}")
        self.network.load_state_dict(ck.get("network_train", ck["network"]))
        if self.averaged is not None:
            self.averaged.load_state_dict(ck["network"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler and ck.get("grad_scaler"):
            self.scaler.load_state_dict(ck["grad_scaler"])
        self.epoch, self.log, self.best_ema = int(ck["epoch"]), ck["log"], float(ck["best_ema"])

    # ----- the loop ----------------------------------------------------------------------------
    def train_step(self, image, target) -> float:
        image, target = self._input(image), target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_torch_dtype, enabled=self.amp):
            pred = self.model(image)
            loss = self.compute_loss(pred.float(), target, image)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.optimizer.step()
        self.update_average()
        return float(loss.detach())

    @torch.no_grad()
    def validation_mae_gy(self, batches) -> float:
        network = self.evaluated_network
        network.eval()
        errors = []
        for _ in range(self.val_iterations):
            image, target, ref = next(batches)
            image, target = self._input(image), target.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_torch_dtype, enabled=self.amp):
                pred = network(image).float()
            body = self.body_mask(image)
            per_sample = ((pred - target).abs() * body).flatten(1).sum(1) / body.flatten(1).sum(1).clamp_min(1)
            errors += (per_sample.cpu() * ref.float()).tolist()
        network.train()
        mean = torch.tensor(float(np.mean(errors)), device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.world_size
        return float(mean)

    def run_training(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.network.train()
        run_start, first_epoch = time.time(), self.epoch
        train = iter(self._loader(self.train_cases, self.get_training_transforms(), self.seed,
                                  self.epoch * self.iterations_per_epoch))
        val = iter(self._loader(self.val_cases, None, self.seed + 7919, self.epoch * self.val_iterations,
                                num_workers=self.num_workers // 4))
        while self.epoch < self.num_epochs:
            start = time.time()
            lr = self.lr_at(self.epoch)
            for g in self.optimizer.param_groups:   # a group may carry its own multiplier (fine-tuning)
                g["lr"] = lr * g.get("lr_mult", 1.0)
            losses = []
            bar = tqdm(range(self.iterations_per_epoch), desc=f"epoch {self.epoch + 1}/{self.num_epochs}",
                       disable=not self.is_main, leave=False)
            for _ in bar:
                image, target, _ = next(train)
                losses.append(self.train_step(image, target))
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            val_mae = self.validation_mae_gy(val)
            self.on_epoch_end(float(np.mean(losses)), val_mae, self.optimizer.param_groups[0]["lr"], time.time() - start)
            self.fit_to_time_budget(time.time() - run_start, self.epoch - first_epoch)
        del train, val   # stops the loader workers
        self.save(CHECKPOINT_FINAL)
        if self.is_main:
            (self.output_dir / CHECKPOINT_LATEST).unlink(missing_ok=True)

    def fit_to_time_budget(self, elapsed_s: float, epochs_done: int) -> None:
        """With time_budget_s, set num_epochs (at most the requested number) to what the mean epoch time
        so far lets finish in the budget; it grows back when epochs get faster (a machine that was busy
        early on). The learning-rate schedule follows the new length."""
        if not self.time_budget_s or epochs_done < 1:
            return
        fits = int((self.time_budget_s - elapsed_s) // (elapsed_s / epochs_done))
        epochs = torch.tensor(max(self.epoch, min(self.epoch_cap, self.epoch + fits)), device=self.device)
        if self.world_size > 1:   # every rank must stop after the same epoch: rank 0 decides
            torch.distributed.broadcast(epochs, src=0)
        self.num_epochs = int(epochs)

    def on_epoch_end(self, train_loss: float, val_mae: float, lr: float, seconds: float) -> None:
        ema_prev = self.log["val_mae_ema_gy"][-1] if self.log["val_mae_ema_gy"] else val_mae
        ema = self.ema_momentum * ema_prev + (1 - self.ema_momentum) * val_mae
        for k, v in (("train_loss", train_loss), ("val_mae_gy", val_mae), ("val_mae_ema_gy", ema), ("lr", lr),
                     ("epoch_time_s", seconds)):
            self.log[k].append(float(v))
        self.epoch += 1
        if ema < self.best_ema:
            self.best_ema = ema
            self.save(CHECKPOINT_BEST)
        self.save(CHECKPOINT_LATEST)
        if self.is_main:
            line = (f"epoch {self.epoch}/{self.num_epochs}  train loss {train_loss:.4f}  val MAE {val_mae:.3f} Gy "
                    f"(smoothed {ema:.3f})  lr {lr:.2e}  {seconds:.1f} s")
            tqdm.write(line)
            with open(self.output_dir / TRAINING_LOG, "a") as f:
                f.write(line + "\n")
            plot_progress(self.log, self.output_dir / PROGRESS_PLOT)


def default_num_workers(device: torch.device, world_size: int = 1) -> int:
    """Loader workers per process: none on the CPU (the cores train); on CUDA every core but one per
    rank (one OpenKBP batch of 4 takes a core about a second to load and augment, a GPU step ~0.1 s),
    overridable with the environment variable nndose_n_workers."""
    if os.environ.get("nndose_n_workers"):
        value = os.environ["nndose_n_workers"]
        if not value.isdigit():
            raise NndoseError(f"nndose_n_workers={value!r}: must be a whole number of loader workers (0 or more)")
        return int(value)
    if device.type != "cuda":
        return 0
    return max(1, (os.cpu_count() or 1) // max(1, world_size) - 1)
