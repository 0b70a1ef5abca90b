"""Dose-mask cascade (CascU-Net-DM) against its first stage alone, on held-out phantoms.

Trains the five folds of 3d_fullres (each fold saves its out-of-fold predictions), then the five
folds of 3d_cascade_fullres on those predictions. Scores, on the same held-out cases, the five-fold
stage-1 ensemble against the five-fold cascade (whose stage 1 is that same ensemble): OpenKBP
scores, per-structure voxel MAE, isodose Dice 10-100 % and DVH point errors, the measures the
cascade paper reports. Also reports both stages' out-of-fold validation scores. Writes JSON.

python benchmarks/cascade.py -o benchmarks/results/cascade_<machine>.json [--n 60 --epochs 40 --iterations 50]
"""
from __future__ import annotations

import json
import time

from benchmarks import pipeline
from nndose.cli.common import run_cli
from nndose.io.layout import FOLDS, SUMMARY_FILE, TEST_DIR, VALIDATION_DIR, fold_folder
from nndose.io.raw_dataset import list_cases



def _validation(model_dir) -> dict:
    scores = [json.loads((fold_folder(model_dir, f) / VALIDATION_DIR / SUMMARY_FILE).read_text())["aggregate"]
              for f in FOLDS]
    return {"dose_score_gy": sum(s["dose_score"] for s in scores) / len(scores),
            "dvh_score_gy": sum(s["dvh_score"] for s in scores) / len(scores)}


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_cascade", 60)
    args = ap.parse_args()
    start = time.time()
    pipeline.use_work_folder(args.work)
    raw = pipeline.phantoms(930, "Cascade", args.n, seed=13, num_processes=args.np)
    pipeline.plan(930, args.small_network, num_processes=args.np, configs=("3d_fullres", "3d_cascade_fullres"))
    result = {"n_phantoms": args.n, "epochs": args.epochs, "iterations_per_epoch": args.iterations,
              "folds": len(FOLDS)}
    test_cases = list_cases(raw, TEST_DIR)
    dirs = {}
    for config in ("3d_fullres", "3d_cascade_fullres"):
        for fold in FOLDS:
            dirs[config] = pipeline.train(930, args.epochs, args.iterations, args.device, config=config, fold=fold)
        key = "stage1" if config == "3d_fullres" else "cascade"
        result[key] = pipeline.predict_and_score(dirs[config], test_cases, raw, args.work / "pred" / key, args.device,
                                                 config=config, folds=FOLDS)
        result[key]["out_of_fold_validation"] = _validation(dirs[config])
    result["seconds"] = time.time() - start
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    run_cli("benchmarks.cascade", lambda _argv: main())   # an NndoseError is one line, exit 2
