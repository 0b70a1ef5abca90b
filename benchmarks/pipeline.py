"""Shared steps of the benchmark scripts: a work folder, phantoms, plans, training, prediction, scores."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

from dataclasses import replace

from nndose.cli.common import OneLineParser
from nndose.datasets.phantoms import generate_phantom_dataset
from nndose.devices import resolve_device
from nndose.evaluation.evaluate import compare, evaluate_folder
from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
from nndose.experiment_planning.planner import CPU_PLANNER, PlannerOptions
from nndose.inference.predict_cases import predict_cases
from nndose.inference.predictor import DosePredictor
from nndose.io.layout import CHECKPOINT_FINAL, PLANS_FILE, fold_folder, model_folder
from nndose.io.raw_dataset import load_dataset_json
from nndose.paths import ENV_VARIABLES, dataset_folder_name, preprocessed_root, raw_root, require_dataset, results_root
from nndose.plans import load_plans
from nndose.training.run import TrainingRun, train_fold


def phantom_benchmark_parser(doc: str, work: str, n: int | None = 80) -> argparse.ArgumentParser:
    """The options every phantom benchmark shares (-o, --work, --n, --epochs, --iterations, --device, ...)."""
    ap = OneLineParser(description=doc)
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path(work))
    if n is not None:
        ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small_network", action="store_true", help="the demo's CPU-sized network")
    ap.add_argument("-np", type=int, default=8)
    return ap


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def use_work_folder(work: Path, keep: bool = False) -> Path:
    """Point nndose's three folders into `work`, emptied first unless `keep`."""
    work = Path(work).resolve()
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    for var in ENV_VARIABLES:
        os.environ[var] = str(work / var)
        (work / var).mkdir(parents=True, exist_ok=True)
    return work


def phantoms(dataset_id: int, name: str, n: int, seed: int, style: str = "standard", num_processes: int = 2,
             test_fraction: float = 0.2, **mix) -> Path:
    """Generate a phantom raw dataset; `mix` passes `sites` and `modalities` through."""
    folder = raw_root() / dataset_folder_name(dataset_id, name)
    generate_phantom_dataset(folder, n, seed=seed, test_fraction=test_fraction, style=style,
                             num_processes=num_processes, **mix)
    return folder


def copy_raw(src: Path, dataset_id: int, name: str) -> Path:
    """A copy of raw dataset `src` under a new id; one already there (a work folder kept for reuse) is kept."""
    dst = raw_root() / dataset_folder_name(dataset_id, name)
    if not dst.is_dir():
        shutil.copytree(src, dst)
    return dst


def planner_options(small_network: bool, **options) -> PlannerOptions:
    """The demo's CPU plan or the default one, `options` overriding PlannerOptions fields (e.g.
    beam_channels=False, max_batch=4); checked as PlannerOptions checks them."""
    return replace(CPU_PLANNER if small_network else PlannerOptions(), **options)


def plan(dataset_id: int, small_network: bool, num_processes: int = 2, configs: tuple[str, ...] = ("3d_fullres",),
         **options) -> None:
    """Plan and preprocess with planner_options(small_network, **options)."""
    planner = planner_options(small_network, **options)
    plan_and_preprocess(dataset_id, planner, PreprocessingRun(configurations=tuple(configs), num_processes=num_processes))


def train(dataset_id: int, epochs: int, iterations: int, device: str, exclude_sites=(), config: str = "3d_fullres",
          fold: str = "all", reuse: bool = False, trainer: str = "nndoseTrainer") -> Path:
    """The trained model folder; with `reuse`, a fold that already has its final checkpoint is kept."""
    if reuse:
        pre = require_dataset(preprocessed_root(), dataset_id, "preprocessed")
        model = model_folder(results_root() / pre.name, trainer, load_plans(pre / PLANS_FILE).plans_name, config)
        if (fold_folder(model, fold) / CHECKPOINT_FINAL).is_file():
            return model
    return train_fold(TrainingRun(dataset_id=dataset_id, configuration=config, fold=fold, trainer=trainer, device=device,
                                  epochs=epochs, iterations_per_epoch=iterations,
                                  exclude_sites=tuple(exclude_sites))).parent


def score(case_dirs: list[Path], raw: Path, predictions: Path) -> dict:
    """OpenKBP scores, MAE (Gy and % of prescription), isodose Dice, per-structure MAE and DVH point errors,
    and each case's dose, DVH and MAE errors (for paired tests between models)."""
    summary = evaluate_folder(case_dirs[0].parent, predictions, load_dataset_json(raw))
    cases = summary["cases"]
    agg = summary["aggregate"]
    points: dict[str, list[float]] = {}
    for s in agg["structures"].values():
        for k, v in s["abs_error"].items():
            if v["mean"] is not None:
                points.setdefault(k, []).append(v["mean"])
    return {"cases": len(cases), "dose_score_gy": agg["dose_score"], "dvh_score_gy": agg["dvh_score"],
            "mae_body_gy": agg["mae_body_gy"]["mean"],
            "mae_percent_of_prescription": float(np.mean([c["mae_body_gy"] / c["reference_dose_gy"] * 100 for c in cases])),
            "isodose_dice": {k: v["mean"] for k, v in agg["isodose_dice"].items()},
            "structure_mae_gy": {n: s["mae_gy"]["mean"] for n, s in agg["structures"].items()},
            "dvh_point_abs_error_gy": {k: float(np.mean(v)) for k, v in sorted(points.items())},
            "per_case": [{k: c[k] for k in ("case", "dose_error_openkbp", "dvh_error_openkbp", "mae_body_gy")}
                         for c in cases]}


def predict_and_score(model_dir: Path, case_dirs: list[Path], raw: Path, out: Path, device: str,
                      config: str = "3d_fullres", folds=("all",)) -> dict:
    predictor = DosePredictor(model_dir, config, folds=list(folds), device=resolve_device(device))
    predict_cases(case_dirs, out, predictor, progress=False)
    return score(case_dirs, raw, out)


def gain_over(baseline: dict, model: dict) -> dict:
    """What a model gains over the baseline on the same cases (positive = better), with the cases it
    predicts better and paired Wilcoxon tests of the per-case dose and DVH errors."""
    dice = [k for k, v in baseline["isodose_dice"].items() if v is not None and model["isodose_dice"][k] is not None]
    points = sorted(set(baseline["dvh_point_abs_error_gy"]) & set(model["dvh_point_abs_error_gy"]))
    return {"dose_score_gy": baseline["dose_score_gy"] - model["dose_score_gy"],
            "dvh_score_gy": baseline["dvh_score_gy"] - model["dvh_score_gy"],
            "mae_percent_of_prescription": baseline["mae_percent_of_prescription"] - model["mae_percent_of_prescription"],
            "mean_isodose_dice_10_100": float(np.mean([model["isodose_dice"][k] - baseline["isodose_dice"][k] for k in dice])),
            "isodose_levels_improved": f"{sum(model['isodose_dice'][k] > baseline['isodose_dice'][k] for k in dice)}/{len(dice)}",
            "dvh_points_improved": f"{sum(model['dvh_point_abs_error_gy'][k] < baseline['dvh_point_abs_error_gy'][k] for k in points)}/{len(points)}",
            **paired(baseline["per_case"], model["per_case"])}


def paired(baseline_cases: list[dict], model_cases: list[dict]) -> dict:
    tests = compare({"cases": model_cases}, {"cases": baseline_cases})
    base = {c["case"]: c for c in baseline_cases}
    out = {}
    for key, name in (("dose_error_openkbp", "dose"), ("dvh_error_openkbp", "dvh")):
        better = sum(c[key] < base[c["case"]][key] for c in model_cases)
        out[f"cases_better_{name}"] = f"{better}/{len(model_cases)}"
        out[f"wilcoxon_p_{name}"] = tests[key]["wilcoxon_p"]
    return out
