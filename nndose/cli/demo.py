"""nndose_demo: the whole job on built-in data, no download, a few minutes on a laptop CPU.

Generates the phantom dataset, plans and preprocesses it (a small network for the CPU), trains one
model on the training phantoms, predicts the held-out phantoms, fits the distance-falloff baseline,
evaluates both and prints a table with where the plots are; then checks the held-out plans with
plan QA, one of them re-planned to spare an organ less, and says what was flagged.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.devices import DEVICE_CHOICES
from nndose.errors import NndoseError
from nndose.experiment_planning.planner import CPU_PLANNER
from nndose.paths import ENV_VARIABLES

DATASET_ID = 900


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_demo", description="Run nndose end to end on the built-in phantom dataset.")
    ap.add_argument("-o", "--output", type=Path, default=Path("nndose_demo_output"),
                    help="work folder (recreated; default ./nndose_demo_output)")
    ap.add_argument("-n", type=int, default=40, help="phantoms (default 40, a fifth held out)")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    ap.add_argument("--iterations_per_epoch", type=int, default=20, help="iterations per epoch (default 20)")
    ap.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ap.add_argument("-np", type=int, default=2, help="processes for data generation and preprocessing")
    args = ap.parse_args(argv)
    if args.n < 10:
        raise NndoseError("-n must be at least 10")
    work = args.output.resolve()
    if work.exists() and not (work / ".nndose_demo").is_file():
        raise NndoseError(f"{work} exists and is not an nndose demo folder; choose another with -o")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / ".nndose_demo").touch()
    for var in ENV_VARIABLES:
        os.environ[var] = str(work / var.split("_", 1)[1])
    start = time.time()

    from nndose.datasets.phantoms import generate_phantom_dataset
    from nndose.devices import resolve_device
    from nndose.evaluation.evaluate import evaluate_folder
    from nndose.evaluation.falloff_baseline import FalloffBaseline
    from nndose.evaluation.plots import case_figure, summary_figure
    from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
    from nndose.inference.predict_cases import predict_folder
    from nndose.inference.predictor import DosePredictor
    from nndose.io.atomic import atomic_write_json
    from nndose.cli.demo_qa import qa_step
    from nndose.io.layout import PROGRESS_PLOT, SUMMARY_FILE, TEST_DIR, TRAIN_DIR, prediction_path
    from nndose.io.raw_dataset import list_cases, load_case
    from nndose.io.volumes import read_volume
    from nndose.paths import dataset_folder_name
    from nndose.training.run import TrainingRun, train_fold

    raw = work / "raw" / dataset_folder_name(DATASET_ID, "Phantoms")
    print(f"[1/6] generating {args.n} phantoms -> {raw}")
    info = generate_phantom_dataset(raw, args.n, seed=0, num_processes=args.np)
    print("[2/6] fingerprint, plan (a small CPU network) and preprocess")
    plan_and_preprocess(DATASET_ID, CPU_PLANNER, PreprocessingRun(configurations=("3d_fullres",), num_processes=args.np))
    print(f"[3/6] training ({args.epochs} epochs x {args.iterations_per_epoch} iterations)")
    fold_dir = train_fold(TrainingRun(dataset_id=DATASET_ID, configuration="3d_fullres", fold="all", trainer="nndoseTrainer_CPU",
                                      device=args.device, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch))
    print("[4/6] predicting the held-out phantoms; fitting the distance-falloff baseline")
    test_dir = raw / TEST_DIR
    net_pred, base_pred = work / "predictions" / "network", work / "predictions" / "falloff_baseline"
    predictor = DosePredictor(fold_dir.parent, "3d_fullres", folds=["all"], device=resolve_device(args.device))
    predict_folder(test_dir, net_pred, predictor)
    FalloffBaseline.fit(list_cases(raw, TRAIN_DIR), info).predict_folder(list_cases(raw, TEST_DIR), info, base_pred)
    print("[5/6] evaluating")
    rows = {}
    for name, folder in (("network (nndose)", net_pred), ("distance-falloff baseline", base_pred)):
        summary = evaluate_folder(test_dir, folder, info)
        atomic_write_json(folder / SUMMARY_FILE, summary)
        rows[name] = summary
    plots = work / "plots"
    for c in rows["network (nndose)"]["cases"]:
        case = load_case(test_dir / c["case"], info, require_dose=True)
        case_figure(case, read_volume(prediction_path(net_pred, c["case"]))[0], info, plots / f"{c['case']}.png")
    summary_figure(rows["network (nndose)"], plots / "summary.png")
    n_test = len(rows["network (nndose)"]["cases"])
    print(f"\nHeld-out phantoms: {n_test} cases ({', '.join(sorted({c['site'] for c in rows['network (nndose)']['cases']}))})")
    print(f"{'model':28s} {'dose score (Gy)':>16s} {'DVH score (Gy)':>15s} {'MAE in body (Gy)':>17s} {'Dice@50%':>9s}")
    for name, s in rows.items():
        a = s["aggregate"]
        print(f"{name:28s} {a['dose_score']:16.3f} {a['dvh_score']:15.3f} {a['mae_body_gy']['mean']:17.3f} "
              f"{a['isodose_dice']['50%']['mean']:9.3f}")
    print(f"\nplots: {plots}  (summary.png and one figure per case)")
    print(f"summaries: {net_pred / SUMMARY_FILE}, {base_pred / SUMMARY_FILE}")
    print(f"training curve: {fold_dir / PROGRESS_PLOT}")
    print("\n[6/6] plan QA of the held-out plans (one of them re-planned to spare an organ less)")
    for line in qa_step(raw, 0, args.n, predictor, work):
        print(line)
    print(f"total time {time.time() - start:.0f} s")


def main(argv=None) -> None:
    run_cli("nndose_demo", _main, argv)
