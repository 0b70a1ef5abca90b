"""The OpenKBP accuracy run: convert the training and validation sets, plan, train one model within
a wall-clock budget, predict the test folder, score it (OpenKBP dose and DVH scores, the
challenge's definitions) and write the submission CSVs for the challenge's own evaluator.

python -m benchmarks.openkbp --minutes 240 -o benchmarks/results/openkbp_<machine>.json          # a CUDA machine
python -m benchmarks.openkbp --minutes 8 --small_network --max_batch 4 --iterations 50 -o /tmp/openkbp_cpu.json  # a CPU check

--openkbp takes the folder of the .tar.xz archives (default ../shared/data/openkbp) or a folder
holding train-pats/ and validation-pats/ (or test-pats/); --test names the split to predict.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import pipeline
from nndose.cli.common import run_cli
from nndose.datasets.openkbp import convert_openkbp, export_openkbp
from nndose.datasets.openkbp_archives import extract_patients
from nndose.errors import NndoseError
from nndose.io.layout import TEST_DIR
from nndose.io.raw_dataset import list_cases

REPO = Path(__file__).resolve().parents[1]


def split_archives(source: Path, split: str) -> list[Path]:
    """The split's archives in `source` ([] where it holds the split's pt_* folders unpacked, <split>-pats/);
    refused in one line where it has neither."""
    if (source / f"{split}-pats").is_dir():
        return []
    archives = sorted(source.glob(f"openkbp-{split}*.tar.xz"))
    if not archives:
        raise NndoseError(f"{source}: neither {split}-pats/ nor openkbp-{split}*.tar.xz")
    return archives


def patient_folders(source: Path, work: Path, split: str) -> Path:
    """A folder of pt_* folders for the split (train, validation or test), unpacking archives if needed."""
    archives = split_archives(source, split)
    if not archives:
        return source / f"{split}-pats"
    dest = work / "csv" / split
    for a in archives:
        extract_patients(a, dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget for training")
    ap.add_argument("--openkbp", type=Path, default=REPO.parent / "shared" / "data" / "openkbp")
    ap.add_argument("--test", default="validation", help="split to predict and score (validation or test)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nndose_openkbp_run"))
    ap.add_argument("--n_train", type=int, help="use only the first N training patients")
    ap.add_argument("--iterations", type=int, default=250, help="iterations per epoch")
    ap.add_argument("--trainer", default="nndoseTrainer")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small_network", action="store_true", help="the demo's CPU-sized network")
    ap.add_argument("--max_batch", type=int, help="the planner's --max_batch (e.g. 4 for a CPU run)")
    ap.add_argument("--disable_tta", action="store_true")
    ap.add_argument("-np", type=int, default=8)
    args = ap.parse_args()
    start = time.time()
    pipeline.use_work_folder(args.work)
    raw = Path(os.environ["nndose_raw"]) / "Dataset960_OpenKBP"
    train = patient_folders(args.openkbp, args.work, "train")
    if args.n_train:
        keep = sorted(p.name for p in train.iterdir() if p.name.startswith("pt_"))[: args.n_train]
        subset = args.work / "csv" / "train_subset"
        subset.mkdir(parents=True)
        for name in keep:
            (subset / name).symlink_to(train / name)
        train = subset
    convert_openkbp(train, raw, num_processes=args.np)
    convert_openkbp(patient_folders(args.openkbp, args.work, args.test), raw, test=True, num_processes=args.np)
    converted = time.time()
    pipeline.plan(960, args.small_network, num_processes=args.np, max_batch=args.max_batch)
    planned = time.time()
    from nndose.training.run import TrainingRun, train_fold
    fold_dir = train_fold(TrainingRun(dataset_id=960, configuration="3d_fullres", fold="all", trainer=args.trainer,
                                      device=args.device, iterations_per_epoch=args.iterations,
                                      time_budget_minutes=args.minutes))
    trained = time.time()
    from nndose.devices import resolve_device
    from nndose.inference.predict_cases import predict_cases
    from nndose.inference.predictor import DosePredictor
    predictor = DosePredictor(fold_dir.parent, "3d_fullres", folds=["all"], device=resolve_device(args.device),
                              use_tta=not args.disable_tta)
    cases = list_cases(raw, TEST_DIR)
    pred = args.work / "predictions"
    predict_cases(cases, pred, predictor)
    predicted = time.time()
    scores = pipeline.score(cases, raw, pred)
    export_openkbp(pred, args.work / "submission")
    epochs = len((fold_dir / "training_log.txt").read_text().splitlines())
    result = {"training_patients": len(list_cases(raw)), "test_split": args.test, "test_patients": len(cases),
              "trainer": args.trainer, "small_network": args.small_network, "max_batch": args.max_batch, "epochs_trained": epochs,
              "iterations_per_epoch": args.iterations, "tta": not args.disable_tta,
              "dose_score_gy": scores["dose_score_gy"], "dvh_score_gy": scores["dvh_score_gy"], "scores": scores,
              "seconds": {"convert": converted - start, "plan_and_preprocess": planned - converted,
                          "train": trained - planned, "predict": predicted - trained},
              "submission_csvs": str(args.work / "submission")}
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}, indent=2))


if __name__ == "__main__":
    run_cli("benchmarks.openkbp", lambda _argv: main())   # an NndoseError is one line, exit 2
