"""Writing small OpenKBP-format patients, and reading real ones from the shared archives."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nndose.datasets.openkbp import SHAPE
from nndose.datasets.openkbp_archives import extract_patients
from tests.conftest import OPENKBP_ARCHIVES


def write_csv(path: Path, volume: np.ndarray, with_values: bool = True) -> None:
    flat = volume.ravel()
    idx = np.flatnonzero(flat)
    with open(path, "w") as f:
        f.write(",data\n")
        for i in idx:
            f.write(f"{i},{flat[i]:.3f}\n" if with_values else f"{i},\n")


def synthetic_patient(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 128^3 OpenKBP patient with a box body, two PTVs and two organs; returns its volumes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    a0, a1, a2 = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    body = (np.abs(a0 - 68) < 22) & (np.abs(a1 - 64) < 30) & (np.abs(a2 - 58) < 20)
    vols = {
        "possible_dose_mask": body,
        "PTV70": (a0 - 60) ** 2 + (a1 - 70) ** 2 + (a2 - 60) ** 2 < 64,
        "PTV56": (a0 - 70) ** 2 + (a1 - 50) ** 2 + (a2 - 70) ** 2 < 100,
        "SpinalCord": (np.abs(a0 - 84) < 3) & (np.abs(a1 - 64) < 3) & body,
        "LeftParotid": (a0 - 60) ** 2 + (a1 - 90) ** 2 + (a2 - 40) ** 2 < 30,
    }
    ct = np.where(body, rng.integers(900, 1200, SHAPE), 0)
    # a plausible plan: each PTV at its prescription (+-3 %), a random low dose elsewhere in the body
    dose = np.where(body, rng.uniform(0, 40, SHAPE), 0.0)
    for name, rx in (("PTV56", 56.0), ("PTV70", 70.0)):
        dose = np.where(vols[name], rx * rng.uniform(0.97, 1.03, SHAPE), dose)
    dose = dose.round(3)
    write_csv(folder / "ct.csv", ct.astype(float), True)
    write_csv(folder / "dose.csv", dose, True)
    for name, mask in vols.items():
        write_csv(folder / f"{name}.csv", mask, False)
    (folder / "voxel_dimensions.csv").write_text("3.906\n3.906\n2.5\n")
    return {"ct": ct, "dose": dose, **vols}


def extract_real_patients(dest: Path, n: int = 2) -> list[Path]:
    """The first n validation patients from ../shared (the test skips when the archive is absent)."""
    return extract_patients(OPENKBP_ARCHIVES / "openkbp-validation.tar.xz", dest, n)
