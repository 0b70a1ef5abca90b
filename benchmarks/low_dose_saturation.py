"""Can a low-dose flag metric (V5Gy) see worse sparing in real plans? Not where the organ's V5Gy is
already (nearly) 100 %: more dose cannot raise it. For every organ at risk of the OpenKBP plans (and,
with --raw, of nndose raw datasets, e.g. the plan-QA benchmark's phantoms), how often V5Gy is at least
95 % and 99.9 %, with its median and the median Dmean.

python -m benchmarks.low_dose_saturation -o benchmarks/results/low_dose_saturation_openkbp_phantoms.json \
    --splits train validation --raw /tmp/nndose_plan_qa_bench_120/nndose_raw/Dataset970_QA \
    /tmp/nndose_plan_qa_bench_120/nndose_raw/Dataset975_QAPyRadPlan
(the plan-QA benchmark's work folder: its phantom engine's and pyRadPlan's training phantoms)

--openkbp takes the folder of the .tar.xz archives (default ../shared/data/openkbp) or one holding
train-pats/ and validation-pats/; --splits the splits read (default: validation, 33 plans).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.openkbp import REPO, patient_folders, split_archives
from benchmarks.pipeline import write_result
from nndose.cli.common import OneLineParser, run_cli
from nndose.datasets.openkbp import ORGANS, dense_from_sparse, read_sparse_csv, read_voxel_dims
from nndose.evaluation.metrics import dvh_points
from nndose.io.layout import TRAIN_DIR
from nndose.io.raw_dataset import list_cases, load_case, load_dataset_json

SATURATED_PERCENT = (95.0, 99.9)


def saturation(values: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    """Per organ, from (V5Gy in %, Dmean in Gy) of each plan that has it: how many plans, the share of
    them with V5Gy at least each of SATURATED_PERCENT, the median V5Gy and Dmean."""
    out = {}
    for organ, rows in sorted(values.items()):
        v5, dmean = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        out[organ] = {"plans": len(rows),
                      **{f"v5gy_at_least_{p:g}_percent": float(np.mean(v5 >= p)) for p in SATURATED_PERCENT},
                      "median_v5gy_percent": float(np.median(v5)), "median_dmean_gy": float(np.median(dmean))}
    return out


def _add(values: dict, organ: str, dose_in_organ: np.ndarray, voxel_mm3: float) -> None:
    if dose_in_organ.size:
        points = dvh_points(dose_in_organ, "oar", voxel_mm3)
        values.setdefault(organ, []).append((points["V5Gy"], points["Dmean"]))


def openkbp_values(patients: Path) -> tuple[int, dict[str, list[tuple[float, float]]]]:
    """How many OpenKBP patient folders (pt_*) lie under `patients`, and (V5Gy, Dmean) of each of their
    organs."""
    values: dict = {}
    folders = sorted(patients.glob("pt_*"))
    for folder in tqdm(folders, desc=patients.name, unit="plan"):
        dose = dense_from_sparse(*read_sparse_csv(folder / "dose.csv", True), np.float32)
        voxel_mm3 = float(np.prod(read_voxel_dims(folder / "voxel_dimensions.csv")))
        for organ in ORGANS:
            if (folder / f"{organ}.csv").is_file():
                idx, _ = read_sparse_csv(folder / f"{organ}.csv", False)
                _add(values, organ, dose.reshape(-1)[idx], voxel_mm3)
    return len(folders), values


def raw_values(dataset: Path) -> tuple[int, dict[str, list[tuple[float, float]]]]:
    """How many training cases an nndose raw dataset has, and (V5Gy, Dmean) of each of their organs at risk."""
    info = load_dataset_json(dataset)
    values: dict = {}
    cases = list_cases(dataset, TRAIN_DIR)
    for case_dir in tqdm(cases, desc=dataset.name, unit="plan"):
        case = load_case(case_dir, info, require_dose=True)
        for organ in info.organs:
            if organ in case.structures:
                _add(values, organ, case.dose[case.structures[organ]], case.grid.voxel_volume_mm3)
    return len(cases), values


def _summary(counted: tuple[int, dict]) -> dict:
    plans, values = counted
    return {"plans": plans, "organs": saturation(values)}


def main() -> None:
    ap = OneLineParser(prog="benchmarks.low_dose_saturation", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--openkbp", type=Path, default=REPO.parent / "shared" / "data" / "openkbp")
    ap.add_argument("--splits", nargs="+", default=["validation"], choices=["train", "validation"])
    ap.add_argument("--raw", type=Path, nargs="*", default=[], help="nndose raw datasets (their training cases)")
    args = ap.parse_args()
    for split in args.splits:   # every source checked before any is read
        split_archives(args.openkbp, split)
    for dataset in args.raw:
        load_dataset_json(dataset)
    result = {"saturated_percent": list(SATURATED_PERCENT)}
    with tempfile.TemporaryDirectory() as work:
        for split in args.splits:
            result[f"openkbp_{split}"] = _summary(openkbp_values(patient_folders(args.openkbp, Path(work), split)))
    for dataset in args.raw:
        result[dataset.name] = _summary(raw_values(dataset))
    write_result(args.o, result)


if __name__ == "__main__":
    run_cli("benchmarks.low_dose_saturation", lambda _argv: main())
