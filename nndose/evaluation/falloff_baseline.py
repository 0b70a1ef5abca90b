"""The distance-falloff baseline: each body voxel gets the prescription of its nearest target times a
falloff f(distance to that target), f being the median of dose / prescription per 2.5 mm distance
bin over the training cases. What a network adds is measured against it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nndose.io.raw_dataset import DatasetInfo, RawCase, load_case
from nndose.io.layout import prediction_path
from nndose.io.volumes import write_volume
from nndose.preprocessing.body import case_body

BIN_MM = 2.5
MAX_MM = 200.0


def nearest_target_geometry(case: RawCase, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """(distance in mm to the nearest target voxel, that voxel's prescription in Gy)."""
    rx = np.zeros(case.ct.shape, dtype=np.float32)
    for p in sorted(case.plan.prescriptions, key=lambda p: p.dose_gy):
        if p.structure in case.structures:
            rx[case.structures[p.structure]] = p.dose_gy
    dist, idx = ndimage.distance_transform_edt(rx == 0, sampling=case.grid.spacing_zyx, return_indices=True)
    return dist, rx[tuple(idx)]


@dataclass
class FalloffBaseline:
    falloff: np.ndarray  # median dose / prescription per distance bin

    @staticmethod
    def fit(case_dirs: list[Path], info: DatasetInfo) -> "FalloffBaseline":
        nbins = int(MAX_MM / BIN_MM) + 1
        samples: list[list[np.ndarray]] = [[] for _ in range(nbins)]
        for d in case_dirs:
            case = load_case(d, info, require_dose=True)
            body = case_body(case, info.body)
            dist, rx = nearest_target_geometry(case, info)
            bins = np.minimum((dist[body] / BIN_MM).astype(int), nbins - 1)
            ratio = case.dose[body] / np.maximum(rx[body], 1e-6)
            for b in np.unique(bins):
                samples[b].append(ratio[bins == b])
        falloff = np.array([np.median(np.concatenate(s)) if s else np.nan for s in samples])
        valid = np.flatnonzero(~np.isnan(falloff))
        falloff = np.interp(np.arange(nbins), valid, falloff[valid])
        return FalloffBaseline(falloff.astype(np.float32))

    def predict(self, case: RawCase, info: DatasetInfo) -> np.ndarray:
        dist, rx = nearest_target_geometry(case, info)
        pos = np.clip(dist / BIN_MM, 0, len(self.falloff) - 1)
        dose = rx * np.interp(pos, np.arange(len(self.falloff)), self.falloff)
        return np.where(case_body(case, info.body), dose, 0.0).astype(np.float32)

    def predict_folder(self, case_dirs: list[Path], info: DatasetInfo, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for d in case_dirs:
            case = load_case(d, info, require_dose=False)
            write_volume(prediction_path(out_dir, case.name), self.predict(case, info), case.grid)
