"""nndose_evaluate -ref RAW_CASES -pred PRED_FOLDER [-o summary.json] [--plots] [--compare OTHER_PRED]"""
from __future__ import annotations

from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli
from nndose.evaluation.evaluate import compare, evaluate_folder
from nndose.io.atomic import atomic_write_json
from nndose.io.layout import SUMMARY_FILE, prediction_path
from nndose.io.raw_dataset import load_case, load_dataset_json
from nndose.io.volumes import read_volume


def _main(argv) -> None:
    ap = OneLineParser(prog="nndose_evaluate", description="Score predictions against reference cases.")
    ap.add_argument("-ref", required=True, type=Path, help="folder of raw reference cases with dose (e.g. casesTs)")
    ap.add_argument("-pred", required=True, type=Path, help="folder of <case>.nii.gz predictions")
    ap.add_argument("-o", type=Path, help="summary.json path (default PRED/summary.json)")
    ap.add_argument("--plots", action="store_true", help="per-case DVH and slice figures, and a summary figure")
    ap.add_argument("--compare", type=Path, help="another prediction folder: paired Wilcoxon tests")
    ap.add_argument("--allow_missing", action="store_true",
                    help="score the cases that have a prediction even when some reference cases have none")
    args = ap.parse_args(argv)
    summary = evaluate_folder(args.ref, args.pred, allow_missing=args.allow_missing)
    if summary["missing_predictions"]:
        print(f"note: {len(summary['missing_predictions'])} reference case(s) have no prediction and are not scored")
    if args.compare:
        other = evaluate_folder(args.ref, args.compare, allow_missing=args.allow_missing)
        summary["comparison"] = {"other": str(args.compare), **compare(summary, other)}
    out = args.o or args.pred / SUMMARY_FILE
    atomic_write_json(out, summary)
    agg = summary["aggregate"]
    print(f"dose score {agg['dose_score']:.4f} Gy  DVH score {agg['dvh_score']:.4f} Gy  "
          f"MAE in body {agg['mae_body_gy']['mean']:.4f} Gy  ({len(summary['cases'])} cases) -> {out}")
    if args.plots:
        from nndose.evaluation.plots import case_figure, summary_figure
        info = load_dataset_json(args.ref.parent)
        plots = args.pred / "plots"
        for c in summary["cases"]:
            case = load_case(args.ref / c["case"], info, require_dose=True)
            case_figure(case, read_volume(prediction_path(args.pred, c["case"]))[0], info, plots / f"{c['case']}.png")
        summary_figure(summary, plots / "summary.png")
        print(f"plots: {plots}")


def main(argv=None) -> None:
    run_cli("nndose_evaluate", _main, argv)
