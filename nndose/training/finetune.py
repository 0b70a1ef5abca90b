"""Transfer learning to a new planning style (Kandalan et al. recipe): start from a trained model,
freeze the encoder, re-initialise the output layer, train the pretrained layers with a tenth of the
learning rate (the new output layer at the full rate by default).

The fine-tuned model keeps the pretrained network (topology and patch size) on the target
dataset's plan; both plans must list the same input channels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nndose.errors import NndoseError
from nndose.io.checkpoints import load_checkpoint
from nndose.io.layout import CHECKPOINT_FINAL, MODEL_PLANS_FILE, check_fold, fold_folder, list_folds
from nndose.plans import Plans, load_plans
from nndose.training.trainer import nndoseTrainer


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """The transfer-learning recipe. The pretrained layers that stay trainable learn at `lr_scale` times
    the from-scratch rate; a re-initialised output layer has no pretrained weights to protect and learns
    at `head_lr_scale` times it (1.0: the full rate, so that it converges within a short schedule)."""
    pretrained: Path                       # the trained model folder
    pretrained_fold: str | None = None     # default: its first trained fold
    freeze: str = "encoder"                # or "none"
    reinit_head: bool = True
    lr_scale: float = 0.1
    head_lr_scale: float = 1.0
    head_init: str = "least_squares"       # or "random": how the re-initialised output layer starts

    def __post_init__(self):
        if self.head_init not in ("least_squares", "random"):
            raise NndoseError(f"--head_init {self.head_init!r}: least_squares or random")
        if self.freeze not in ("encoder", "none"):
            raise NndoseError(f"--freeze {self.freeze!r}: encoder or none")
        if not (self.lr_scale > 0 and self.head_lr_scale > 0):
            raise NndoseError("--lr_scale and --head_lr_scale must be positive")
        if self.pretrained_fold is not None:
            check_fold(self.pretrained_fold)

    def to_json(self) -> dict:
        return {"pretrained": str(Path(self.pretrained).resolve()), "pretrained_fold": self.pretrained_fold,
                "freeze": self.freeze, "reinit_head": self.reinit_head, "lr_scale": self.lr_scale,
                "head_lr_scale": self.head_lr_scale, "head_init": self.head_init}


def finetune_plans(target_plans: Plans, pretrained_plans: Plans, config: str) -> Plans:
    """The target plan with the pretrained configuration's network and patch size; checks channels."""
    target, source = target_plans.configuration(config), pretrained_plans.configuration(config)
    if target.channels != source.channels:
        missing = sorted(set(source.channels) ^ set(target.channels))
        raise NndoseError(f"the target plan's {config} channels differ from the pretrained model's "
                          f"({', '.join(missing[:6]) or 'order differs'}); the datasets need the same structure vocabulary")
    tuned = replace(target, network=source.network, patch_size_zyx=source.patch_size_zyx)
    return replace(target_plans.with_configuration(tuned),
                   extra={**target_plans.extra,
                          "finetuned_from": {"dataset": pretrained_plans.dataset_name, "configuration": config}})


class nndoseTrainer_Finetune(nndoseTrainer):
    """Starts from `pretrained_checkpoint` with the `FinetuneOptions` recipe."""
    num_epochs = 100

    def __init__(self, *args, finetune: FinetuneOptions, pretrained_checkpoint: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetune, self.pretrained_checkpoint = finetune, Path(pretrained_checkpoint)

    def build_network(self) -> torch.nn.Module:
        net = super().build_network()
        ck = load_checkpoint(self.pretrained_checkpoint)
        try:
            net.load_state_dict(ck["network"])
        except RuntimeError as e:
            raise NndoseError(f"{self.pretrained_checkpoint}: weights do not fit the plan's network ({str(e).splitlines()[0]})") from None
        if self.finetune.reinit_head:
            net.head.reset_parameters()
        if self.finetune.freeze == "encoder":
            for module in net.encoder_modules:
                for p in module.parameters():
                    p.requires_grad_(False)
        return net

    def run_training(self) -> None:
        if self.finetune.reinit_head and self.finetune.head_init == "least_squares" and self.epoch == 0:
            self.fit_head()
        super().run_training()

    @torch.no_grad()
    def fit_head(self, n_batches: int = 8, ridge: float = 1e-3) -> None:
        """Fit the re-initialised output layer (a linear map of the last decoder features) by ridge
        regression to the target cases' dose inside the body: fine-tuning then starts from the new
        style's best linear read-out instead of random weights (linear probing, then fine-tuning).
        The normal equations are summed over ranks, so every rank gets the same layer."""
        head, captured = self.network.head, []
        hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        batches = iter(self._loader(self.train_cases, None, self.seed + 104729, num_workers=0))
        n = head.in_channels + 1
        gram = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        moment = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.network.eval()
        try:
            for _ in range(n_batches):
                image, target, _ = next(batches)
                image, target = image.to(self.device), target.to(self.device)
                self.network(image)
                body = self.body_mask(image)[:, 0] > 0
                feats = captured.pop().float().permute(0, 2, 3, 4, 1)[body]
                x = torch.cat([feats, torch.ones_like(feats[:, :1])], 1).double()
                gram += x.T @ x
                moment += x.T @ target[:, 0][body].double()
        finally:
            hook.remove()
            self.network.train()
        if self.world_size > 1:
            torch.distributed.all_reduce(gram)
            torch.distributed.all_reduce(moment)
        if gram[-1, -1] == 0:   # no body voxel in any batch: keep the random layer
            return
        scale = float(gram.diagonal().mean())
        w = torch.linalg.solve(gram + ridge * scale * torch.eye(n, dtype=gram.dtype, device=gram.device), moment)
        head.weight.copy_(w[:-1].reshape(head.weight.shape).to(head.weight.dtype))
        head.bias.copy_(w[-1:].to(head.bias.dtype))

    def configure_optimizer(self, params) -> torch.optim.Optimizer:
        params = list(params)
        head = {id(p) for p in self.network.head.parameters()} if self.finetune.reinit_head else set()
        groups = [{"params": [p for p in params if id(p) not in head], "lr_mult": self.finetune.lr_scale}]
        if head:
            groups.append({"params": [p for p in params if id(p) in head], "lr_mult": self.finetune.head_lr_scale})
        for g in groups:
            g["lr"] = self.initial_lr * g["lr_mult"]
        return torch.optim.AdamW(groups, lr=self.initial_lr, weight_decay=self.weight_decay)


def pretrained_checkpoint(model_dir: Path, fold: str | None, checkpoint: str = CHECKPOINT_FINAL) -> Path:
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_PLANS_FILE).is_file():
        raise NndoseError(f"{model_dir}: not a trained model folder (no {MODEL_PLANS_FILE})")
    folds = [check_fold(fold)] if fold else list_folds(model_dir, checkpoint)
    if not folds:
        raise NndoseError(f"{model_dir}: no fold has {checkpoint}")
    path = fold_folder(model_dir, folds[0]) / checkpoint
    if not path.is_file():
        raise NndoseError(f"{path}: checkpoint not found")
    return path


def load_pretrained_plans(model_dir: Path) -> Plans:
    return load_plans(Path(model_dir) / MODEL_PLANS_FILE)
