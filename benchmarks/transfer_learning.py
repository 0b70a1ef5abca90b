"""Transfer to a new planning style (Kandalan et al.). A source model is trained on the "standard"
style; the target style ("sparing": stronger organ-at-risk and normal-tissue sparing) has a few
training cases. Compared on the target style's held-out cases: the source model as it is; the
source model fine-tuned with nndose_finetune's default recipe (encoder frozen, output layer
re-initialised by a least-squares fit to the target cases and trained at the full rate, the other
layers at a tenth); the same with a random output layer; the paper's exact rates (random output
layer at a tenth too); fine-tuning with the output layer kept; a model trained from scratch on the
few target cases. Also the source model on its own style's test cases,
the accuracy the target style should be brought back to. Reported: isodose Dice 10-100 %, DVH
point errors, OpenKBP scores, MAE. Writes JSON.

python -m benchmarks.transfer_learning -o benchmarks/results/transfer_<machine>.json [--n_source 80 --n_target 30]
--reuse keeps the work folder's phantoms, plans and trained source and scratch models (same options).
"""
from __future__ import annotations

import shutil
import time

from benchmarks import pipeline
from nndose.io.raw_dataset import TEST_DIR, TRAIN_DIR, list_cases
from nndose.training.run_finetune import finetune_fold

FINETUNE_VARIANTS = {"finetuned_model": {},
                     "finetuned_random_head": {"head_init": "random"},
                     "finetuned_paper_rates_head_lr_0.1": {"head_init": "random", "head_lr_scale": 0.1},
                     "finetuned_keep_head": {"reinit_head": False}}


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_transfer", None)
    ap.add_argument("--n_source", type=int, default=80)
    ap.add_argument("--n_target", type=int, default=30, help="target-style phantoms; a fifth are held out")
    ap.add_argument("--finetune_epochs", type=int, default=20)
    ap.add_argument("--reuse", action="store_true", help="keep the data and the source and scratch models of a former run")
    args = ap.parse_args()
    start = time.time()
    work = pipeline.use_work_folder(args.work, keep=args.reuse)
    source, target = work / "nndose_raw/Dataset940_SourceStyle", work / "nndose_raw/Dataset941_TargetStyle"
    if not (args.reuse and (work / "nndose_preprocessed/Dataset941_TargetStyle").is_dir()):
        pipeline.phantoms(940, "SourceStyle", args.n_source, seed=17, style="standard", num_processes=args.np)
        pipeline.phantoms(941, "TargetStyle", args.n_target, seed=19, style="sparing", num_processes=args.np)
        pipeline.plan(940, args.small_network, num_processes=args.np)
        pipeline.plan(941, args.small_network, num_processes=args.np)
    test = list_cases(target, TEST_DIR)
    result = {"n_source": args.n_source, "target_training_cases": len(list_cases(target, TRAIN_DIR)),
              "target_test_cases": len(test), "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
              "iterations_per_epoch": args.iterations}
    source_model = pipeline.train(940, args.epochs, args.iterations, args.device, reuse=args.reuse)
    result["source_model_on_source_test"] = pipeline.predict_and_score(
        source_model, list_cases(source, TEST_DIR), source, work / "pred/source_on_source", args.device)
    result["source_model"] = pipeline.predict_and_score(source_model, test, target, work / "pred/source", args.device)
    for name, options in FINETUNE_VARIANTS.items():
        trained = finetune_fold(941, "3d_fullres", "all", source_model, epochs=args.finetune_epochs,
                                iterations=args.iterations, device=args.device, **options).parent
        model = work / "models" / name   # each variant writes the same trainer folder: keep it aside
        shutil.rmtree(model, ignore_errors=True)
        shutil.move(trained, model)
        result[name] = pipeline.predict_and_score(model, test, target, work / "pred" / name, args.device)
    scratch = pipeline.train(941, args.epochs, args.iterations, args.device, reuse=args.reuse)
    result["target_from_scratch"] = pipeline.predict_and_score(scratch, test, target, work / "pred/scratch", args.device)
    result["seconds"] = time.time() - start
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    main()
