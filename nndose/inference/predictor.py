"""Predict the dose of a case with a trained model folder: preprocess exactly as training did,
sliding window with Gaussian weights, left-right mirroring TTA (paired organs swapped), average over
folds, run the cascade's stages in order, multiply back by the reference dose, resample to the
case's original grid and zero outside the body.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nndose.errors import NndoseError
from nndose.inference.mirroring import lateral_pairs, mirror_lr
from nndose.inference.sliding_window import sliding_window
from nndose.io.checkpoints import load_checkpoint
from nndose.io.layout import (CHECKPOINT_FINAL, MODEL_PLANS_FILE, check_folds, ensemble_folds, fold_folder,
                               previous_stage_folder)
from nndose.io.raw_dataset import DatasetInfo, RawCase, load_dataset_json
from nndose.io.volumes import Grid
from nndose.networks import build_network
from nndose.plans import Configuration, load_plans
from nndose.preprocessing.body import case_body
from nndose.preprocessing.channels import channel_pad_values
from nndose.preprocessing.preprocess_case import preprocess_case
from nndose.preprocessing.resampling import resample_to_grid


class DosePredictor:
    def __init__(self, model_dir: Path, config: str, *, folds=None, device: torch.device = torch.device("cpu"),
                 use_tta: bool = True, checkpoint: str = CHECKPOINT_FINAL, step: float = 0.5, previous_folds=None):
        """previous_folds: the cascade's first-stage folds (default: all it has)."""
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            here = sorted(p.name for p in self.model_dir.parent.glob("*__*__*") if p.is_dir())
            raise NndoseError(f"{self.model_dir}: no trained model here (train it, or install one)"
                              + (f"; models of this dataset: {', '.join(here)} (named TRAINER__PLANS__CONFIG: choose with -tr, -p, -c)"
                                 if here else ""))
        if not 0.0 < step <= 1.0:
            raise NndoseError(f"--step_size {step}: must be in (0, 1] (a fraction of the patch)")
        self.plans = load_plans(self.model_dir / MODEL_PLANS_FILE)
        self.info: DatasetInfo = load_dataset_json(self.model_dir)
        self.config = config
        self.conf: Configuration = self.plans.configuration(config)
        self.device, self.use_tta, self.step = device, use_tta, step
        folds = check_folds(folds) if folds else ensemble_folds(self.model_dir, checkpoint)
        if not folds:
            raise NndoseError(f"{self.model_dir}: no fold has {checkpoint}")
        self.networks = []
        for f in folds:
            path = fold_folder(self.model_dir, f) / checkpoint
            ck = load_checkpoint(path, map_location=device)
            if list(ck["channels"]) != list(self.conf.channels):
                raise NndoseError(f"{path}: its channels differ from the plan's {config}")
            net = build_network(self.conf).to(device)
            if self.plans.training.channels_last:
                net = net.to(memory_format=torch.channels_last_3d)
            try:
                net.load_state_dict(ck["network"])
            except RuntimeError as e:
                raise NndoseError(f"{path}: weights do not fit the plan's network ({str(e).splitlines()[0][:120]})") from None
            net.eval()
            self.networks.append(net)
        self.folds = folds
        self.pairs = lateral_pairs(list(self.conf.channels))
        self.pad = channel_pad_values(self.conf.channels, self.plans.ct_normalization)
        self.previous = None
        if self.conf.previous_stage:
            self.previous = DosePredictor(previous_stage_folder(self.model_dir, self.conf.previous_stage),
                                          self.conf.previous_stage, folds=previous_folds, device=device, use_tta=use_tta,
                                          checkpoint=checkpoint, step=step)

    @torch.no_grad()
    def _predict_net(self, net, image: torch.Tensor) -> torch.Tensor:
        amp = self.device.type == "cuda"
        dtype = torch.bfloat16 if self.plans.training.amp_dtype == "bfloat16" else torch.float16
        memory = torch.channels_last_3d if self.plans.training.channels_last else torch.contiguous_format

        def run(x):
            with torch.autocast(self.device.type, dtype=dtype, enabled=amp):
                return net(x.contiguous(memory_format=memory)).float()

        out = sliding_window(run, image, self.conf.patch_size_zyx, self.step, self.pad)
        if self.use_tta:
            mirrored = sliding_window(run, mirror_lr(image, self.pairs), self.conf.patch_size_zyx, self.step,
                                      mirror_lr(torch.tensor(self.pad).view(-1, 1, 1, 1), self.pairs).view(-1).tolist())
            out = 0.5 * (out + torch.flip(mirrored, (2,)))
        return out

    def predict_folds(self, data: np.ndarray) -> np.ndarray:
        """Each fold's normalized dose (F, Z, Y, X) for the stored channels of a preprocessed case."""
        if self.previous is not None:
            stage1 = self.previous.predict_folds(data).mean(0)
            data = np.concatenate([data, np.stack([(stage1 >= t).astype(np.float32) for t in self.conf.dose_mask_levels])])
        if data.shape[0] != len(self.conf.channels):
            raise NndoseError(f"input has {data.shape[0]} channels, the plan's {self.config} expects {len(self.conf.channels)}")
        image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(self.device)
        return torch.stack([self._predict_net(net, image) for net in self.networks]).cpu().numpy()

    def predict_preprocessed(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalized dose (Z, Y, X) averaged over folds, and its standard deviation across folds."""
        folds = self.predict_folds(data)
        return folds.mean(0), folds.std(0)

    def preprocess(self, case: RawCase) -> tuple[np.ndarray, dict]:
        data, _, props = preprocess_case(case, self.plans, self.conf)
        return data, props

    def to_gy(self, case: RawCase, normalized: np.ndarray, props: dict) -> np.ndarray:
        """A normalized volume on the preprocessed grid -> Gy on the case's original grid, zero outside
        the body and never negative."""
        body = case_body(case, self.plans.body)
        return to_original_grid(np.maximum(normalized, 0) * props["reference_dose_gy"], props, body)

    def predict_case(self, case: RawCase) -> tuple[np.ndarray, np.ndarray]:
        """(dose in Gy, spread in Gy across folds), both on the case's original grid."""
        data, props = self.preprocess(case)
        mean, std = self.predict_preprocessed(data)
        return self.to_gy(case, mean, props), self.to_gy(case, std, props)


def to_original_grid(volume: np.ndarray, props: dict, body: np.ndarray) -> np.ndarray:
    """Preprocessed-grid volume -> original grid (linear), zero outside the crop and the body."""
    rgrid = Grid.from_json(props["preprocessed_grid"])
    cgrid = Grid.from_json(props["cropped_grid"])
    out = np.zeros(Grid.from_json(props["original_grid"]).shape_zyx, dtype=np.float32)
    crop = tuple(slice(a, b) for a, b in zip(props["crop_start_zyx"], props["crop_stop_zyx"]))
    out[crop] = resample_to_grid(volume, rgrid, cgrid, order=1)
    return np.where(body, out, 0.0).astype(np.float32)
