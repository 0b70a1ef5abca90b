"""Running pyRadPlan (benchmarks/pyradplan_dose.py) from nndose's benchmarks: its environment, the dose
script called on chunks of cases in parallel, a raw dataset re-planned, and the training cases nndose's
own checks refuse left out of every dataset a comparison uses."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_json, staged_directory
from nndose.io.layout import TEST_DIR, TRAIN_DIR
from nndose.io.raw_dataset import list_cases, load_dataset_json, read_case, write_dataset_json
from nndose.paths import dataset_folder_name, raw_root

HERE = Path(__file__).resolve().parent
DOSE_SCRIPT = HERE / "pyradplan_dose.py"
REQUIREMENTS = HERE / "requirements-pyradplan.txt"
DEFAULT_VENV = Path.home() / ".cache" / "nndose" / "pyradplan_venv"
CASES_PER_CALL = 4


def pyradplan_python(given: Path | None) -> Path:
    """The Python of an environment with pyRadPlan, made from REQUIREMENTS when not given."""
    if given is not None:
        if not Path(given).is_file():
            raise NndoseError(f"{given}: no such Python for pyRadPlan")
        return Path(given)
    python = DEFAULT_VENV / "bin" / "python"
    if not python.is_file():
        print(f"making the pyRadPlan environment in {DEFAULT_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    return python


def _replan_chunk(python: Path, cases: list[Path], options: tuple[str, ...]) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([str(python), str(DOSE_SCRIPT), *options, *map(str, cases)], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise NndoseError(f"pyRadPlan failed on {cases[0].name}..{cases[-1].name}: {last}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def replan(cases: list[Path], python: Path, num_processes: int, options: tuple[str, ...] = ()) -> list[dict]:
    """The dose script (with its `options`, e.g. a degradation) on raw case folders in place, a few cases
    per call, `num_processes` calls at once; one record per case, in the cases' order."""
    chunks = [cases[i:i + CASES_PER_CALL] for i in range(0, len(cases), CASES_PER_CALL)]
    records: list[dict] = []
    with ThreadPoolExecutor(max(1, num_processes)) as pool, tqdm(total=len(cases), desc="pyRadPlan", unit="case") as bar:
        for done in pool.map(lambda chunk: _replan_chunk(python, chunk, options), chunks):
            records += done
            bar.update(len(done))
    if [r.get("case") for r in records] != [c.name for c in cases]:
        raise NndoseError(f"pyRadPlan returned {len(records)} records for {len(cases)} cases")
    return records


def replan_dataset(src: Path, dataset_id: int, name: str, python: Path, num_processes: int) -> tuple[Path, list[dict]]:
    """A copy of raw dataset `src` whose every case's dose (and machine) is pyRadPlan's; built aside and
    moved into place when complete."""
    final = raw_root() / dataset_folder_name(dataset_id, name)
    with staged_directory(final, replace=True) as staging:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        records = replan(list_cases(staging, TRAIN_DIR) + list_cases(staging, TEST_DIR), python, num_processes)
        info = load_dataset_json(staging)
        write_dataset_json(staging, replace(info, description=info.description.replace("analytic dose engine",
                                                                                      "dose re-planned by pyRadPlan")))
    return final, records


def pyradplan_version(python: Path) -> str:
    """The version of pyRadPlan that `python` imports."""
    return subprocess.run([str(python), "-c", "import pyRadPlan; print(pyRadPlan.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def refused_training_cases(datasets: list[Path]) -> list[str]:
    """Training cases that nndose's own checks refuse in any of the datasets (e.g. a hot spot over 1.5 x Rx)."""
    refused = set()
    for folder in datasets:
        info = load_dataset_json(folder)
        refused |= {case.name for case in list_cases(folder, TRAIN_DIR) if read_case(case, info, True)[1]}
    return sorted(refused)


def leave_out(datasets: list[Path], cases: list[str]) -> None:
    """Remove training `cases` from every dataset, so that every engine and variant trains on the same plans."""
    for folder in datasets:
        for name in cases:
            shutil.rmtree(folder / TRAIN_DIR / name, ignore_errors=True)
        write_dataset_json(folder, replace(load_dataset_json(folder), num_training=len(list_cases(folder, TRAIN_DIR))))


def leave_out_refused(datasets: list[Path], record: Path) -> list[str]:
    """Leave the training cases that nndose's checks refuse in any of `datasets` out of all of them; the
    list is kept in `record` (a work folder's file), so a reused work folder, whose datasets no longer
    hold them, still reports them. Remove `record` when the datasets are built anew."""
    if record.is_file():
        refused = json.loads(record.read_text())
    else:
        refused = refused_training_cases(datasets)
        atomic_write_json(record, refused)
    leave_out(datasets, refused)
    return refused
