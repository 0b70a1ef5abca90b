"""Transfer to a new planning style (Kandalan et al.): a model trained on the source style
("standard" phantoms) against the same model fine-tuned (encoder frozen, head re-initialised, a
tenth of the learning rate) on a few cases of the target style (also with the source's output
layer kept, trained on fold 0's four fifths of those cases) ("sparing": stronger organ-at-risk
sparing), and against a model trained from scratch on those few target cases. All three predict
the target style's held-out cases; reported: isodose Dice 10-100 %, DVH point errors, OpenKBP
scores, MAE. Writes JSON.

python benchmarks/transfer_learning.py -o benchmarks/results/transfer_<machine>.json [--n_source 80 --n_target 30]
"""
from __future__ import annotations

import time

from benchmarks import pipeline
from nndose.io.raw_dataset import TEST_DIR, TRAIN_DIR, list_cases
from nndose.training.run_finetune import finetune_fold


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_transfer", None)
    ap.add_argument("--n_source", type=int, default=80)
    ap.add_argument("--n_target", type=int, default=30, help="target-style phantoms; a fifth are held out")
    ap.add_argument("--finetune_epochs", type=int, default=20)
    args = ap.parse_args()
    start = time.time()
    pipeline.use_work_folder(args.work)
    pipeline.phantoms(940, "SourceStyle", args.n_source, seed=17, style="standard", num_processes=args.np)
    target = pipeline.phantoms(941, "TargetStyle", args.n_target, seed=19, style="sparing", num_processes=args.np)
    pipeline.plan(940, args.small_network, num_processes=args.np)
    pipeline.plan(941, args.small_network, num_processes=args.np)
    test = list_cases(target, TEST_DIR)
    result = {"n_source": args.n_source, "target_training_cases": len(list_cases(target, TRAIN_DIR)),
              "target_test_cases": len(test), "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
              "iterations_per_epoch": args.iterations}
    source_model = pipeline.train(940, args.epochs, args.iterations, args.device)
    result["source_model"] = pipeline.predict_and_score(source_model, test, target, args.work / "pred/source", args.device)
    tuned = finetune_fold(941, "3d_fullres", "all", source_model, epochs=args.finetune_epochs,
                          iterations=args.iterations, device=args.device).parent
    result["finetuned_model"] = pipeline.predict_and_score(tuned, test, target, args.work / "pred/finetuned", args.device)
    tuned_keep = finetune_fold(941, "3d_fullres", "0", source_model, reinit_head=False, epochs=args.finetune_epochs,
                               iterations=args.iterations, device=args.device).parent
    result["finetuned_keep_head_fold0"] = pipeline.predict_and_score(tuned_keep, test, target, args.work / "pred/keep_head",
                                                                     args.device, folds=("0",))
    scratch = pipeline.train(941, args.epochs, args.iterations, args.device)
    result["target_from_scratch"] = pipeline.predict_and_score(scratch, test, target, args.work / "pred/scratch", args.device)
    result["seconds"] = time.time() - start
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    main()
