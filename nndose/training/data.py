"""Random training patches from the preprocessed cases, as a torch IterableDataset."""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from nndose.preprocessing.storage import array_path, load_case, open_array

# Extra context sampled around a patch so that rotation and scaling do not pull in padding.
CONTEXT = (1.1, 1.45, 1.45)


def crop_padded(array, start, size, pad_values) -> np.ndarray:
    """array[:, start:start+size] with out-of-volume parts filled per channel by pad_values."""
    c = array.shape[0]
    out = np.empty((c,) + tuple(size), dtype=np.float32)
    out[:] = np.asarray(pad_values, dtype=np.float32).reshape((c,) + (1,) * len(size))
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[1:]):
        a, b = max(s, 0), min(s + n, dim)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


class PatchDataset(IterableDataset):
    """Endless batches of (image, dose, reference dose) samples; a third of the patches centre on
    target voxels. Batch b (counted from `first_batch`) is drawn from a generator seeded with
    (seed, rank, b), whichever loader worker makes it: the stream does not depend on the number of
    workers, and a loader made for epoch e (first_batch = e * batches per epoch) repeats exactly what
    an uninterrupted run saw from there, so one loader can live for the whole training."""

    def __init__(self, folder, cases: list[str], patch_size, channel_pad: list[float], seed: int,
                 transforms=None, foreground_fraction: float = 0.33, rank: int = 0, context=CONTEXT,
                 stage1_dir=None, dose_mask_levels=(), batch_size: int = 1, first_batch: int = 0):
        """stage1_dir/dose_mask_levels: the cascade's second stage appends (stage-1 prediction >= level) masks.
        Give the DataLoader the same batch_size: each worker yields whole batches."""
        self.folder, self.cases, self.patch = folder, list(cases), tuple(int(p) for p in patch_size)
        self.stage1_dir, self.levels = stage1_dir, tuple(dose_mask_levels)
        self.pad, self.seed, self.transforms, self.fg = channel_pad, seed, transforms, foreground_fraction
        self.rank, self.batch_size, self.first_batch = rank, int(batch_size), int(first_batch)
        self.window = tuple(int(math.ceil(p * c)) for p, c in zip(self.patch, context)) if transforms else self.patch
        self._targets: dict[str, np.ndarray] = {}

    def _target_voxels(self, name, data, prescription_channel: int) -> np.ndarray:
        if name not in self._targets:
            idx = np.argwhere(np.asarray(data[prescription_channel]) > 0)
            self._targets[name] = idx[:: max(1, len(idx) // 5000)]
        return self._targets[name]

    def sample(self, rng: np.random.Generator):
        name = self.cases[rng.integers(len(self.cases))]
        data, dose, props = load_case(self.folder, name)
        shape = np.asarray(data.shape[1:])
        win = np.asarray(self.window)
        fg = self._target_voxels(name, data, props["channels"].index("prescription")) if "prescription" in props["channels"] else []
        if len(fg) and rng.uniform() < self.fg:
            center = fg[rng.integers(len(fg))]
        else:
            center = np.array([rng.integers(0, s) for s in shape])
        lo = np.minimum(np.maximum(center - win // 2, np.minimum(0, shape - win)), np.maximum(shape - win, 0))
        lo = np.where(shape < win, (shape - win) // 2, lo)  # center small volumes
        n_stored = data.shape[0]
        img = crop_padded(data, lo, win, self.pad[:n_stored])
        if self.levels:
            stage1 = crop_padded(open_array(array_path(self.stage1_dir, name)), lo, win, [0.0])
            img = np.concatenate([img, np.stack([(stage1[0] >= t).astype(np.float32) for t in self.levels])])
        tgt = crop_padded(dose, lo, win, [0.0])
        image, target = torch.from_numpy(img), torch.from_numpy(tgt)
        if self.transforms is not None:
            out = self.transforms(image=image, regression_target=target)
            image, target = out["image"], out["regression_target"]
        return image.float().contiguous(), target.float().contiguous(), float(props["reference_dose_gy"])

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # the DataLoader asks its workers for batches in turn: worker w makes batches w, w + W, ...
        for b in itertools.count(self.first_batch + worker, workers):
            rng = np.random.default_rng([self.seed, self.rank, b])
            torch.manual_seed(int(rng.integers(2 ** 31)))
            np.random.seed(int(rng.integers(2 ** 31)))  # batchgeneratorsv2 draws from numpy's global state
            for _ in range(self.batch_size):
                yield self.sample(rng)

