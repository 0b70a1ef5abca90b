"""Predict the dose of raw cases with a trained model folder: preprocess exactly as training did,
sliding window with Gaussian weights, left-right mirroring TTA (paired organs swapped), average over
folds, run the cascade's stages in order, multiply back by the reference dose, resample to the
case's original grid and zero outside the body.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nndose.errors import NndoseError
from nndose.io.raw_dataset import DatasetInfo, RawCase, list_cases, load_case, parse_dataset_json, read_case
from nndose.io.volumes import Grid, write_volume
from nndose.plans import DOSE_MASK_PREFIX, configuration, load_plans
from nndose.preprocessing.body import body_from_ct
from nndose.preprocessing.preprocess_case import preprocess_case
from nndose.preprocessing.resampling import resample_to_grid
from nndose.training.augmentation import lateral_pairs, mirror_lr
from nndose.training.checkpoints import load_checkpoint
from nndose.training.data import channel_pad_values
from nndose.training.network import build_network
from nndose.inference.sliding_window import sliding_window


def model_folder(results_dataset_dir: Path, trainer: str, plans_name: str, config: str) -> Path:
    return Path(results_dataset_dir) / f"{trainer}__{plans_name}__{config}"


def available_folds(model_dir: Path, checkpoint: str) -> list[str]:
    return sorted(p.name[len("fold_"):] for p in Path(model_dir).glob("fold_*") if (p / checkpoint).is_file())


class DosePredictor:
    def __init__(self, model_dir: Path, config: str, folds=None, device: torch.device = torch.device("cpu"),
                 use_tta: bool = True, checkpoint: str = "checkpoint_final.pth", step: float = 0.5,
                 previous_folds=None):
        """previous_folds: the cascade's first-stage folds (default: all it has)."""
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise NndoseError(f"{self.model_dir}: no trained model here (train it, or install one)")
        self.plans = load_plans(self.model_dir / "plans.json")
        self.info: DatasetInfo = parse_dataset_json(json.loads((self.model_dir / "dataset.json").read_text()),
                                                    str(self.model_dir / "dataset.json"))
        self.config = config
        self.conf = configuration(self.plans, config)
        self.device, self.use_tta, self.step = device, use_tta, step
        folds = [str(f) for f in folds] if folds else available_folds(self.model_dir, checkpoint)
        if not folds:
            raise NndoseError(f"{self.model_dir}: no fold has {checkpoint}")
        self.networks = []
        for f in folds:
            ck = load_checkpoint(self.model_dir / f"fold_{f}" / checkpoint, map_location=device)
            if ck.get("channels") != self.conf["channels"]:
                raise NndoseError(f"{self.model_dir}/fold_{f}/{checkpoint}: its channels differ from the plan's {config}")
            net = build_network(self.plans, config).to(device)
            net.load_state_dict(ck["network"])
            net.eval()
            self.networks.append(net)
        self.folds = folds
        self.pairs = lateral_pairs(self.conf["channels"])
        self.pad = channel_pad_values(self.conf["channels"], self.plans["ct_normalization"])
        self.previous = None
        if self.conf.get("previous_stage"):
            prev_dir = Path(str(self.model_dir).rsplit("__", 1)[0] + "__" + self.conf["previous_stage"])
            self.previous = DosePredictor(prev_dir, self.conf["previous_stage"], previous_folds, device, use_tta,
                                          checkpoint, step)

    @torch.no_grad()
    def _predict_net(self, net, image: torch.Tensor) -> torch.Tensor:
        amp = self.device.type == "cuda"

        def run(x):
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
                return net(x).float()

        out = sliding_window(run, image, self.conf["patch_size_zyx"], self.step, self.pad)
        if self.use_tta:
            mirrored = sliding_window(run, mirror_lr(image, self.pairs), self.conf["patch_size_zyx"], self.step,
                                      mirror_lr(torch.tensor(self.pad).view(-1, 1, 1, 1), self.pairs).view(-1).tolist())
            out = 0.5 * (out + torch.flip(mirrored, (2,)))
        return out

    def predict_preprocessed(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalized dose (Z, Y, X) averaged over folds, and its standard deviation across folds."""
        if self.previous is not None:
            stage1, _ = self.previous.predict_preprocessed(data)
            levels = self.conf["dose_mask_levels"]
            data = np.concatenate([data, np.stack([(stage1 >= t).astype(np.float32) for t in levels])])
        if data.shape[0] != len(self.conf["channels"]):
            raise NndoseError(f"input has {data.shape[0]} channels, the plan's {self.config} expects {len(self.conf['channels'])}")
        image = torch.from_numpy(np.ascontiguousarray(data)).to(self.device)
        preds = torch.stack([self._predict_net(net, image) for net in self.networks])
        return preds.mean(0).cpu().numpy(), preds.std(0, unbiased=False).cpu().numpy()

    def predict_case_normalized(self, case: RawCase) -> tuple[np.ndarray, np.ndarray, dict]:
        """(dose / reference dose, its spread across folds) on the preprocessed grid, and the case properties."""
        stored = [c for c in self.conf["channels"] if not c.startswith(DOSE_MASK_PREFIX)]
        data, _, props = preprocess_case(case, self.info, self.plans, {**self.conf, "channels": stored})
        mean, std = self.predict_preprocessed(data)
        return mean, std, props

    def to_gy(self, case: RawCase, mean: np.ndarray, std: np.ndarray, props: dict) -> tuple[np.ndarray, np.ndarray]:
        """Normalized prediction -> (dose in Gy, spread in Gy) on the case's original grid, zero outside the body."""
        ref = props["reference_dose_gy"]
        body = case.structures.get(self.info.body) if self.info.body else None
        if body is None:
            body = body_from_ct(case.ct)
        return (to_original_grid(np.maximum(mean, 0) * ref, props, body),
                to_original_grid(std * ref, props, body))

    def predict_case(self, case: RawCase) -> tuple[np.ndarray, np.ndarray]:
        """(dose in Gy, spread in Gy across folds), both on the case's original grid."""
        return self.to_gy(case, *self.predict_case_normalized(case))


def to_original_grid(volume: np.ndarray, props: dict, body: np.ndarray) -> np.ndarray:
    """Preprocessed-grid volume -> original grid (linear), zero outside the crop and the body."""
    rgrid = Grid.from_json(props["preprocessed_grid"])
    cgrid = Grid.from_json(props["cropped_grid"])
    out = np.zeros(Grid.from_json(props["original_grid"]).shape_zyx, dtype=np.float32)
    crop = tuple(slice(a, b) for a, b in zip(props["crop_start_zyx"], props["crop_stop_zyx"]))
    out[crop] = resample_to_grid(volume, rgrid, cgrid, order=1)
    return np.where(body, out, 0.0).astype(np.float32)


def predict_folder(in_dir: Path, out_dir: Path, predictor: DosePredictor, save_spread: bool = False,
                   progress: bool = True) -> list[str]:
    """Predict every case folder in in_dir; writes OUT/<case>.nii.gz (Gy) [and <case>_spread.nii.gz]."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise NndoseError(f"{in_dir}: input folder not found")
    cases = list_cases(in_dir.parent, in_dir.name)
    if not cases:
        raise NndoseError(f"{in_dir}: no case folders (expected the casesTs layout: <case>/ct.nii.gz, structures/, plan.json)")
    return predict_cases(cases, out_dir, predictor, save_spread, progress)


def predict_cases(cases: list[Path], out_dir: Path, predictor: DosePredictor, save_spread: bool = False,
                  progress: bool = True, on_normalized=None) -> list[str]:
    """on_normalized(case name, prediction on the preprocessed grid), when given, sees each case's
    normalized prediction before it is taken back to the original grid."""
    from tqdm import tqdm

    for c in cases:  # every input is checked before anything is written
        _, problems = read_case(c, predictor.info, require_dose=False)
        if problems:
            raise NndoseError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case_dir in tqdm(cases, desc="predict", unit="case", disable=not progress):
        case = load_case(case_dir, predictor.info, require_dose=False)
        mean, std, props = predictor.predict_case_normalized(case)
        if on_normalized is not None:
            on_normalized(case.name, mean)
        dose, spread = predictor.to_gy(case, mean, std, props)
        write_volume(out_dir / f"{case.name}.nii.gz", dose, case.grid)
        if save_spread:
            write_volume(out_dir / f"{case.name}_spread.nii.gz", spread, case.grid)
    return [Path(c).name for c in cases]
