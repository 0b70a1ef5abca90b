"""The OpenKBP challenge format (sparse CSVs on a 128^3 grid) to and from nndose's raw format.

OpenKBP arrays a[i0, i1, i2] run anterior->posterior, right->left and superior->inferior (measured
from structure centroids; see ../shared/data/openkbp/README.md). nndose stores them as LPS volumes
with an identity direction: x = i1, y = i0, z = 127 - i2, spacing from voxel_dimensions.csv
(i0, i1, i2 order), the grid centred on the origin. Both mappings are exact permutations, so a
round trip reproduces every voxel.
"""
from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write, remove_stale_temporaries, replace_path, staging_area
from nndose.io.layout import DATASET_JSON, NIFTI, TEST_DIR, TRAIN_DIR, list_predictions
from nndose.io.plan_file import Machine, Prescription, StaticBeam, TreatmentPlan
from nndose.io.raw_dataset import DatasetInfo, list_cases, load_dataset_json, write_case, write_dataset_json
from nndose.io.volumes import Grid, read_volume
from nndose.kill_points import kill_point
from nndose.parallel import map_with_progress

SHAPE = (128, 128, 128)
ORGANS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
TARGET_DOSES = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
FRACTIONS = 35
BODY = "Body"
GANTRY_ANGLES = tuple(float(a) for a in range(0, 360, 40))
MACHINE = Machine("generic_6MV", 1000.0, 6.0)
DOSE_QUANTUM_GY = 0.001  # dose.csv holds doses to three decimals


def openkbp_to_lps(a: np.ndarray) -> np.ndarray:
    """OpenKBP (AP, RL, SI) array -> nndose (z, y, x) array with z pointing superior."""
    return np.ascontiguousarray(a.transpose(2, 0, 1)[::-1])


def lps_to_openkbp(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v[::-1].transpose(1, 2, 0))


def openkbp_grid(voxel_dims) -> Grid:
    d0, d1, d2 = (float(v) for v in voxel_dims)
    spacing = (d1, d0, d2)
    return Grid((SHAPE[2], SHAPE[0], SHAPE[1]), spacing, tuple(-(n - 1) / 2 * s for n, s in zip(SHAPE, spacing)))


def read_sparse_csv(path: Path, with_values: bool, dtype=np.float32) -> tuple[np.ndarray, np.ndarray | None]:
    """(flat indices, values) of an OpenKBP CSV (header ',data', rows 'index,value' or 'index,')."""
    if not path.is_file():
        raise NndoseError(f"{path}: file not found")
    try:
        with open(path) as f:
            header = f.readline().strip()
            if header.replace(" ", "") != ",data":
                raise ValueError(f"header {header[:40]!r} is not ',data'")
            if with_values:
                table = np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.float64)
                idx = table[:, 0] if table.size else np.zeros(0)
                values = table[:, 1].astype(dtype) if table.size else np.zeros(0, dtype)
            else:
                idx = np.loadtxt(f, delimiter=",", usecols=0, ndmin=1, dtype=np.float64)
                values = None
    except (ValueError, UnicodeDecodeError, IndexError) as e:
        raise NndoseError(f"{path}: not an OpenKBP sparse CSV ({str(e).splitlines()[0][:120]})") from None
    if idx.size and (np.any(idx != np.round(idx)) or idx.min() < 0 or idx.max() >= np.prod(SHAPE)):
        raise NndoseError(f"{path}: voxel indices outside the 128^3 grid")
    if values is not None and not np.all(np.isfinite(values)):
        raise NndoseError(f"{path}: holds NaN or infinite values")
    return idx.astype(np.int64), values


def dense_from_sparse(idx: np.ndarray, values: np.ndarray | None, dtype) -> np.ndarray:
    flat = np.zeros(int(np.prod(SHAPE)), dtype=dtype)
    flat[idx] = 1 if values is None else values
    return flat.reshape(SHAPE)


def read_voxel_dims(path: Path) -> tuple[float, float, float]:
    if not path.is_file():
        raise NndoseError(f"{path}: file not found")
    try:
        dims = np.loadtxt(path, dtype=np.float64).ravel()
    except ValueError:
        raise NndoseError(f"{path}: expected three voxel sizes in mm") from None
    if dims.size != 3 or not np.all(np.isfinite(dims)) or np.any(dims <= 0):
        raise NndoseError(f"{path}: expected three positive voxel sizes in mm, got {dims.tolist()}")
    return tuple(float(d) for d in dims)


def openkbp_dataset_info(name: str, num_training: int) -> DatasetInfo:
    structures = {**{o: "oar" for o in ORGANS}, **{t: "target" for t in TARGET_DOSES}, BODY: "body"}
    return DatasetInfo(name, structures, NIFTI, num_training,
                       "OpenKBP head-and-neck IMRT (AAPM 2020 challenge), converted by nndose_convert_openkbp",
                       {"source": "openkbp", "reference": "Babier et al., Med Phys 48:5549, 2021",
                        "dose_quantum_gy": DOSE_QUANTUM_GY})


def check_patient_folder(folder: Path, need_dose: bool) -> list[str]:
    missing = [f for f in ("ct.csv", "possible_dose_mask.csv", "voxel_dimensions.csv") + (("dose.csv",) if need_dose else ())
               if not (folder / f).is_file()]
    problems = [f"{folder.name}: missing {m}" for m in missing]
    if not any((folder / f"{t}.csv").is_file() for t in TARGET_DOSES):
        problems.append(f"{folder.name}: no target file (PTV56.csv, PTV63.csv or PTV70.csv)")
    return problems


def convert_patient(folder: Path, out_case: Path) -> None:
    """Write one OpenKBP patient as an nndose raw case folder (one patient per case: no patient_id)."""
    grid = openkbp_grid(read_voxel_dims(folder / "voxel_dimensions.csv"))
    idx, values = read_sparse_csv(folder / "ct.csv", True)
    ct = openkbp_to_lps(dense_from_sparse(idx, np.clip(values, 0, 4095), np.float32) - 1024.0)
    dose = None
    if (folder / "dose.csv").is_file():
        idx, values = read_sparse_csv(folder / "dose.csv", True)
        if values.size and values.min() < 0:
            raise NndoseError(f"{folder / 'dose.csv'}: negative dose")
        dose = openkbp_to_lps(dense_from_sparse(idx, values, np.float32))
    structures: dict[str, np.ndarray] = {}
    prescriptions = []
    for name in (BODY,) + ORGANS + tuple(TARGET_DOSES):
        src = folder / ("possible_dose_mask.csv" if name == BODY else f"{name}.csv")
        if not src.is_file():
            continue
        idx, _ = read_sparse_csv(src, False)
        if idx.size == 0:
            continue
        structures[name] = openkbp_to_lps(dense_from_sparse(idx, None, np.uint8))
        if name in TARGET_DOSES:
            prescriptions.append(Prescription(name, TARGET_DOSES[name], FRACTIONS))
    if not prescriptions:
        raise NndoseError(f"{folder.name}: every target file is empty")
    targets = np.any([structures[p.structure] > 0 for p in prescriptions], axis=0)
    iso = grid.index_to_physical(np.argwhere(targets).mean(0))
    plan = TreatmentPlan("head_neck", "IMRT", MACHINE, tuple(prescriptions), tuple(round(float(c), 3) for c in iso),
                         tuple(StaticBeam(g) for g in GANTRY_ANGLES), ())
    write_case(out_case, grid, ct, structures, plan, dose)


def _convert_one(folder: Path, stage: Path) -> str:
    convert_patient(folder, stage / folder.name)
    return folder.name


def _patient_sort_key(p: Path):
    m = re.search(r"(\d+)$", p.name)
    return (int(m.group(1)) if m else 1 << 30, p.name)


def convert_openkbp(input_dir: Path, dataset_dir: Path, test: bool = False, num_processes: int = 2,
                    progress: bool = True) -> list[str]:
    """Convert every pt_* folder in input_dir into dataset_dir (casesTr, or casesTs with test=True).

    All inputs are checked before anything is written; new cases are staged and moved into place only
    when every patient converted, so a failure leaves the dataset as it was.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NndoseError(f"{input_dir}: input folder not found")
    patients = sorted((p for p in input_dir.iterdir() if p.is_dir() and p.name.startswith("pt_")), key=_patient_sort_key)
    if not patients:
        raise NndoseError(f"{input_dir}: no pt_* patient folders (expected the OpenKBP CSV layout)")
    problems = [p for folder in patients for p in check_patient_folder(folder, need_dose=not test)]
    if problems:
        raise NndoseError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    split = TEST_DIR if test else TRAIN_DIR
    name = dataset_dir.name.split("_", 1)[1]
    if (dataset_dir / DATASET_JSON).is_file():
        info = load_dataset_json(dataset_dir)
        if info.extra.get("source") != "openkbp":
            raise NndoseError(f"{dataset_dir} exists and is not an OpenKBP dataset; choose another id")
    elif dataset_dir.exists() and any(p for p in dataset_dir.iterdir() if not p.name.startswith(".")):
        raise NndoseError(f"{dataset_dir} exists without a dataset.json and is not empty; remove it or choose another id")
    created = not dataset_dir.exists()
    remove_stale_temporaries(dataset_dir)
    try:
        with staging_area(dataset_dir, f"staging_{split}") as stage:
            map_with_progress(partial(_convert_one, stage=stage), patients, num_processes, f"convert -> {split}",
                              progress, unit="patient")
            kill_point("convert:cases_staged")
            for folder in patients:
                replace_path(stage / folder.name, dataset_dir / split / folder.name)
            write_dataset_json(dataset_dir, openkbp_dataset_info(name, len(list_cases(dataset_dir, TRAIN_DIR))))
    except BaseException:
        if created:
            shutil.rmtree(dataset_dir, ignore_errors=True)
        raise
    return [p.name for p in patients]


def write_sparse_csv(path: Path, volume_openkbp: np.ndarray) -> None:
    """Non-zero voxels as 'flat_index,value' rows under a ',data' header (the submission format)."""
    flat = volume_openkbp.ravel()
    idx = np.flatnonzero(flat)

    def writer(p: Path) -> None:
        with open(p, "w") as f:
            f.write(",data\n")
            np.savetxt(f, np.column_stack([idx, flat[idx].astype(np.float64)]), fmt=["%d", "%.9g"], delimiter=",")
    atomic_write(path, writer)


def export_openkbp(pred_dir: Path, out_dir: Path) -> list[str]:
    """Write every <case>.nii.gz prediction in pred_dir as OUT/<case>.csv; validates all before writing."""
    files = list_predictions(pred_dir)
    if not files:
        raise NndoseError(f"{pred_dir}: no <case>.nii.gz predictions")
    volumes = {}
    for case, f in files.items():
        dose, grid = read_volume(f)
        if grid.shape_zyx != (SHAPE[2], SHAPE[0], SHAPE[1]) or not np.allclose(grid.direction, np.eye(3).ravel()):
            raise NndoseError(f"{f}: not on the OpenKBP 128^3 grid written by nndose_convert_openkbp ({grid.describe()})")
        if not np.all(np.isfinite(dose)):
            raise NndoseError(f"{f}: prediction holds NaN or infinite values")
        if dose.min() < 0:
            raise NndoseError(f"{f}: negative dose ({dose.min():.3g} Gy)")
        volumes[case] = lps_to_openkbp(dose)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NndoseError(f"{out_dir}: exists and is not a folder (-o names the output folder)")
    remove_stale_temporaries(out_dir.parent, out_dir.name)
    with staging_area(out_dir.parent, f"{out_dir.name}.export") as stage:
        for case, vol in volumes.items():
            write_sparse_csv(stage / f"{case}.csv", vol)
        for case in volumes:
            replace_path(stage / f"{case}.csv", out_dir / f"{case}.csv")
    return list(volumes)
