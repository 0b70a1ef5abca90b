"""Transfer to a new planning style (Kandalan et al.). As in the paper, one site and modulated plans
(default prostate IMRT and VMAT): a source model is trained on the "standard" style; the target
style ("sparing": the optimizer weights organs at risk 3.0 instead of 0.35 and normal tissue 0.3
instead of 0.08) has a few
training cases (default 24) and its own held-out test cases (default 16). Compared on those test
cases: the source model as it is; the source model fine-tuned with nndose_finetune's default recipe;
the same with a random output layer; the paper's exact rates (random output layer at a tenth too);
fine-tuning with the output layer kept; with the encoder trainable too; a model trained from
scratch on the few target cases. Also the source model on its own style's test cases, the accuracy
the target style should be brought back to. Reported: isodose Dice 10-100 %, DVH point errors, OpenKBP scores, MAE, and each model's
gain over the source model. Writes JSON.

python -m benchmarks.transfer_learning -o benchmarks/results/transfer_<machine>.json [--n_source 60 --n_target 40]
--reuse keeps the work folder's phantoms, plans and trained source and scratch models (same options).
"""
from __future__ import annotations

import shutil
import sys
import time

from benchmarks import pipeline
from nndose.cli.common import run_cli
from nndose.io.layout import TEST_DIR, TRAIN_DIR
from nndose.io.raw_dataset import list_cases
from nndose.training.finetune import FinetuneOptions
from nndose.training.run import TrainingRun
from nndose.training.run_finetune import finetune_fold

FINETUNE_VARIANTS = {"finetuned_model": {},
                     "finetuned_random_head": {"head_init": "random"},
                     "finetuned_paper_rates_head_lr_0.1": {"head_init": "random", "head_lr_scale": 0.1},
                     "finetuned_keep_head": {"reinit_head": False},
                     "finetuned_encoder_trainable": {"freeze": "none"}}


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_transfer", None)
    ap.add_argument("--n_source", type=int, default=60, help="source-style phantoms; a fifth are held out")
    ap.add_argument("--n_target", type=int, default=40, help="target-style phantoms")
    ap.add_argument("--target_test_fraction", type=float, default=0.4, help="share of the target phantoms held out")
    ap.add_argument("--sites", nargs="+", default=["prostate"])
    ap.add_argument("--modalities", nargs="+", default=["IMRT", "VMAT"])
    ap.add_argument("--finetune_epochs", type=int, default=60)
    ap.add_argument("--variants", nargs="+", choices=sorted(FINETUNE_VARIANTS), default=list(FINETUNE_VARIANTS))
    ap.add_argument("--reuse", action="store_true", help="keep the data and the source and scratch models of a former run")
    args = ap.parse_args()
    start = time.time()
    work = pipeline.use_work_folder(args.work, keep=args.reuse)
    source, target = work / "nndose_raw/Dataset940_SourceStyle", work / "nndose_raw/Dataset941_TargetStyle"
    mix = {"sites": args.sites, "modalities": args.modalities}
    if not (args.reuse and (work / "nndose_preprocessed/Dataset941_TargetStyle").is_dir()):
        pipeline.phantoms(940, "SourceStyle", args.n_source, seed=17, style="standard", num_processes=args.np, **mix)
        pipeline.phantoms(941, "TargetStyle", args.n_target, seed=19, style="sparing", num_processes=args.np,
                          test_fraction=args.target_test_fraction, **mix)
        pipeline.plan(940, args.small_network, num_processes=args.np)
        pipeline.plan(941, args.small_network, num_processes=args.np)
    test = list_cases(target, TEST_DIR)
    result = {"command": "python -m benchmarks.transfer_learning " + " ".join(sys.argv[1:]), "sites": args.sites, "modalities": args.modalities, "source_style": "standard", "target_style": "sparing",
              "source_training_cases": len(list_cases(source, TRAIN_DIR)),
              "target_training_cases": len(list_cases(target, TRAIN_DIR)), "target_test_cases": len(test),
              "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "iterations_per_epoch": args.iterations,
              "small_network": args.small_network, "seconds_per_step": {}}
    clock = time.time()
    source_model = pipeline.train(940, args.epochs, args.iterations, args.device, reuse=args.reuse)
    result["seconds_per_step"]["source_training"] = time.time() - clock
    result["source_model_on_source_test"] = pipeline.predict_and_score(
        source_model, list_cases(source, TEST_DIR), source, work / "pred/source_on_source", args.device)
    result["source_model"] = pipeline.predict_and_score(source_model, test, target, work / "pred/source", args.device)
    for name in args.variants:
        clock = time.time()
        run = TrainingRun(dataset_id=941, configuration="3d_fullres", fold="all", trainer="nndoseTrainer_Finetune",
                          device=args.device, epochs=args.finetune_epochs, iterations_per_epoch=args.iterations, overwrite=True)
        trained = finetune_fold(run, FinetuneOptions(pretrained=source_model, **FINETUNE_VARIANTS[name])).parent
        result["seconds_per_step"][name] = time.time() - clock
        model = work / "models" / name   # each variant writes the same trainer folder: keep it aside
        shutil.rmtree(model, ignore_errors=True)
        shutil.move(trained, model)
        result[name] = pipeline.predict_and_score(model, test, target, work / "pred" / name, args.device)
    clock = time.time()
    scratch = pipeline.train(941, args.epochs, args.iterations, args.device, reuse=args.reuse)
    result["seconds_per_step"]["target_from_scratch"] = time.time() - clock
    result["target_from_scratch"] = pipeline.predict_and_score(scratch, test, target, work / "pred/scratch", args.device)
    result["gain_over_source_model"] = {name: pipeline.gain_over(result["source_model"], result[name])
                                        for name in [*args.variants, "target_from_scratch"]}
    result["seconds"] = time.time() - start
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    run_cli("benchmarks.transfer_learning", lambda _argv: main())   # an NndoseError is one line, exit 2
