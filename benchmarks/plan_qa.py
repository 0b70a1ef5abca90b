"""Plan QA where the truth is known: does nndose_plan_qa flag the organ a plan spares less than it could,
and leave the others alone?

Prostate and head-and-neck IMRT/VMAT phantoms. A five-fold model is trained on plans of the standard
style. Each held-out phantom is then planned twice by the phantom engine (or pyRadPlan, --engine): in
the model's style, and deliberately worse for one organ (its mean dose raised by --degradation_percent
of the prescription: the phantom engine lowers that organ's optimizer weight; pyRadPlan gives up part of
its sparing, below; the candidate organs are the rectum and bladder, or the parotids; a phantom whose
organs cannot be made that much worse, e.g. one lying in the target, is left out and counted). Plan QA
runs on both sets. Reported for each flag rule (the tolerance and the folds' interval alone; margins
calibrated on the folds' validation cases for 2, 5 and 10 % false alarms; organs flagged on Dmean, the
default, on every metric, and on the low-dose V5Gy alone or with Dmean): sensitivity (degraded organ
flagged, also per organ), false alarms (organs of the standard plans flagged, and standard plans with
any flag), and the degraded plans' other organs flagged; with a sweep of tolerances and the AUC of each
organ metric's excess. --reuse flags again from the work folder's trained folds; --first_test N plans a
fresh test set from phantom N on (default: right after the training phantoms), to check a rule chosen
on the first one.

python -m benchmarks.plan_qa -o benchmarks/results/plan_qa_phantoms_cpu_5_percent.json --small_network -np 2 \
    --device cpu --epochs 40 --iterations 20 --n_test 96
then, on the same trained folds, `--reuse --degradation_percent 10 -o ..._10_percent.json`. `-tr` trains
another trainer (e.g. nndoseTrainer_MAE_DVH) on the same phantoms. On a GPU, the default network:
`-o benchmarks/results/plan_qa_phantoms_h100_5_percent.json --device cuda --n_test 96 -np 16`. A separability
section says how far the model's accuracy lets any flag rule go (AUC of the degraded organ's Dmean excess),
pooled and per technique (site, modality, non-coplanar), with how many training plans had that technique.

--engine pyradplan plans the training phantoms and both test sets with an independent engine instead
(pyRadPlan, benchmarks/pyradplan_dose.py in its own environment, as in benchmarks.independent_engine;
training cases nndose's checks refuse are left out and listed): the degraded organ's fluence is a blend
of the standard plan's and one optimized without that organ's objectives. The phantom engine's plans
share the beam channel's rasterizer; these do not. --beam_per_delivery plans one beam channel per
delivery. Datasets 970 (phantom engine) and 975 (pyRadPlan), + 1 per delivery, live side by side in a
work folder kept with --reuse (the same phantoms), e.g. after the run above:
`--reuse --engine pyradplan --n_test 48 -o benchmarks/results/plan_qa_phantoms_cpu_5_percent_pyradplan.json`,
then `--reuse --engine pyradplan --beam_per_delivery` on the same test plans.

Does more data help? --extra_training N adds phantoms 1000..1000+N-1 (the same seed, past every test
set) to the --n training phantoms; --max_batch 2 keeps the batch the planner picks for 60 (it grows with
the dataset). fold_validation reports the organ mean-dose error of the folds' validation phantoms, also of
the first --n alone, the same phantoms a run without extras validates on; --validation_only stops there
(no test plans), e.g. `--engine pyradplan --extra_training 60 --max_batch 2 --validation_only`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import pipeline
from benchmarks.pyradplan_runner import leave_out_refused, pyradplan_python, pyradplan_version, replan, replan_dataset
from nndose.cli.common import run_cli
from nndose.datasets.degraded_plans import CANDIDATES, check_increase_percent
from nndose.datasets.phantom_dose_engine import STYLES
from nndose.datasets.phantoms import make_case, make_case_with_worse
from nndose.devices import resolve_device
from nndose.errors import NndoseError
from nndose.evaluation.evaluate import aggregate
from nndose.inference.predictor import DosePredictor
from nndose.io.atomic import staged_directory
from nndose.io.layout import (DATASET_JSON, FOLDS, PLAN_FILE, PLANS_FILE, SUMMARY_FILE, TRAIN_DIR, VALIDATION_DIR,
                              fold_folder)
from nndose.io.plan_file import load_plan
from nndose.io.raw_dataset import list_cases, load_dataset_json, write_case, write_dataset_json
from nndose.parallel import map_with_progress
from nndose.paths import find_dataset, preprocessed_root, raw_root, require_dataset
from nndose.qa.calibration import DEFAULT_FALSE_ALARM, calibrate, validation_cases
from nndose.qa.compare import OAR_METRICS, Tolerance, with_tolerance
from nndose.qa.run import plan_qa
from nndose.training.trainer_variants import trainer_class

SITES = ("prostate", "head_neck")
MODALITIES = ("IMRT", "VMAT")
FALSE_ALARMS = (0.02, 0.05, 0.10)
TOLERANCES = ((1.0, 1.5), (1.5, 2.0), (2.0, 3.0), (3.0, 4.5), (4.0, 6.0), (5.0, 8.0))   # (Gy, % of Rx)
# organ flag metrics with the low-dose V5Gy, chosen on the 120-epoch pyRadPlan run's test plans (V5Gy's
# excess separated its degraded organs best, AUC 0.95 against Dmean's 0.93): confirmed with --first_test
LOW_DOSE_FLAG_METRICS = (("V5Gy",), ("Dmean", "V5Gy"))
DATASET_IDS = {"phantom_engine": 970, "pyradplan": 975}   # + 1 with one beam channel per delivery
EXTRA_FIRST = 1000   # --extra_training phantoms are numbered from here, past any test set


def _plan_twice(job: tuple) -> tuple[str, dict | None]:
    """One held-out phantom written standard and degraded under out/; (name, what was degraded or None)."""
    index, seed, percent, out = job
    anatomy, plan, dose, worse = make_case_with_worse(index, seed, STYLES["standard"], percent, sites=SITES,
                                                      modalities=MODALITIES)
    name = f"phantom_{index:03d}"
    if worse is None:
        return name, None
    write_case(out / "standard" / name, anatomy.grid, anatomy.ct, anatomy.structures, plan, dose)
    write_case(out / "degraded" / name, anatomy.grid, anatomy.ct, anatomy.structures, plan, worse.dose_gy)
    return name, {"site": plan.site, **worse.record(plan.reference_dose_gy)}


def write_test_sets(first: int, n: int, seed: int, percent: float, out: Path, num_processes: int = 1) -> dict:
    """The held-out phantoms twice: out/standard/<case>, out/degraded/<case>; returns what was degraded."""
    done = map_with_progress(_plan_twice, [(i, seed, percent, out) for i in range(first, first + n)], num_processes,
                             "test plans, standard and degraded")
    return {"degraded": {name: t for name, t in done if t is not None},
            "left_out": [name for name, t in done if t is None]}


def _write_phantom(job: tuple) -> None:
    """Phantom `index` in the model's style under out/; its dose the phantom engine's, or none (pyRadPlan's to come)."""
    index, seed, out, with_dose = job
    anatomy, plan, dose = make_case(index, seed, STYLES["standard"], sites=SITES, modalities=MODALITIES)
    write_case(out / f"phantom_{index:03d}", anatomy.grid, anatomy.ct, anatomy.structures, plan,
               dose if with_dose else None)


def add_training_phantoms(raw: Path, first: int, n: int, seed: int, num_processes: int = 1) -> None:
    """Phantoms first..first+n-1 added to raw dataset `raw`'s training cases (built aside, moved in when
    whole); dataset.json's count follows."""
    staging = raw / ".extra_training.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    map_with_progress(_write_phantom, [(i, seed, staging, True) for i in range(first, first + n)], num_processes,
                      "more training phantoms")
    for case in sorted(staging.iterdir()):
        os.replace(case, raw / TRAIN_DIR / case.name)
    staging.rmdir()
    write_dataset_json(raw, replace(load_dataset_json(raw), num_training=len(list_cases(raw, TRAIN_DIR))))


def write_test_sets_pyradplan(first: int, n: int, seed: int, percent: float, out: Path, raw: Path, python: Path,
                              num_processes: int = 1) -> dict:
    """write_test_sets with pyRadPlan's plans (benchmarks/pyradplan_dose.py --degrade_percent): the held-out
    phantoms' anatomy and beams, re-planned standard and degraded; built aside, moved into place when whole."""
    candidates = ",".join(sorted({o for site in SITES for o in CANDIDATES[site]}))
    truth = {"degraded": {}, "left_out": []}
    with staged_directory(out, replace=True) as staging:
        (staging / "standard").mkdir()
        shutil.copyfile(raw / DATASET_JSON, staging / DATASET_JSON)   # the dose script's structure kinds
        map_with_progress(_write_phantom, [(i, seed, staging / "standard", False) for i in range(first, first + n)],
                          num_processes, "test phantoms")
        records = replan(list_cases(staging, "standard"), python, num_processes,
                         ("--degrade_percent", f"{percent:g}", "--degraded_into", str(staging / "degraded"),
                          "--candidates", candidates))
        for record in records:
            name, worse = record["case"], record["degraded"]
            if worse is None:
                truth["left_out"].append(name)
                shutil.rmtree(staging / "standard" / name)
            else:
                truth["degraded"][name] = {"site": load_plan(staging / "standard" / name / PLAN_FILE).site, **worse}
    return truth


def score(standard: list, degraded_qa: list, truth: dict) -> dict:
    """Sensitivity and false alarms of one QA run (lists of CaseQA)."""
    hits = [truth[q.case]["organ"] in q.flagged_organs for q in degraded_qa]
    others = [s.flagged for q in degraded_qa for s in q.structures
              if s.kind == "oar" and s.name != truth[q.case]["organ"]]
    organs = [s.flagged for q in standard for s in q.structures if s.kind == "oar"]
    by_organ: dict[str, list[bool]] = {}
    for q, hit in zip(degraded_qa, hits):
        by_organ.setdefault(truth[q.case]["organ"], []).append(hit)
    return {"sensitivity": float(np.mean(hits)),
            "sensitivity_by_organ": {o: f"{sum(h)}/{len(h)}" for o, h in sorted(by_organ.items())},
            "degraded_organ_flagged": int(sum(hits)), "degraded_plans": len(hits),
            "false_alarm_organs": float(np.mean(organs)), "standard_organs": len(organs),
            "standard_plans_flagged": float(np.mean([bool(q.flagged_organs) for q in standard])),
            "degraded_plans_other_organs_flagged": float(np.mean(others)) if others else 0.0}


def _excess(q, organ: str, metric: str = "Dmean") -> float:
    """How much worse than predicted the organ's metric is in the plan (Gy, or percentage points)."""
    return next(m.excess for m in q.structure(organ).metrics if m.name == metric)


def _auc(worse, every) -> float:
    """The probability that a degraded organ's excess beats a normal organ's, ties counting half."""
    worse, every = np.asarray(worse)[:, None], np.asarray(every)[None, :]
    return float(np.mean(worse > every) + 0.5 * np.mean(worse == every))


def metric_aucs(standard: list, degraded: list, truth: dict) -> dict[str, float]:
    """For each organ metric: the probability that the degraded organ's excess over the prediction beats
    a standard plan's organ's (AUC); doses in % of each plan's prescription, V-x in percentage points."""
    def excess(q, organ, spec):
        return _excess(q, organ, spec.name) * (100.0 / q.reference_dose_gy if spec.unit == "Gy" else 1.0)
    out = {}
    for spec in OAR_METRICS:
        out[spec.name] = _auc([excess(q, truth[q.case]["organ"], spec) for q in degraded],
                              [excess(q, s.name, spec) for q in standard for s in q.structures if s.kind == "oar"])
    return out


def technique(plan) -> str:
    """The plan's site and delivery, the strata of the separability breakdown (e.g. 'head_neck IMRT
    non-coplanar')."""
    return f"{plan.site} {plan.modality}" + (" non-coplanar" if plan.non_coplanar else "")


def _separation(worse: list[float], every: list[float]) -> dict:
    """AUC of degraded organs' Dmean excess against standard organs', and the sensitivity of a threshold
    set on those standard organs for 5 % false alarms (an oracle); in Gy, or the unit the excesses come in."""
    worse, every = np.asarray(worse), np.asarray(every)
    oracle = float(np.quantile(every, 0.95))
    return {"auc_dmean": _auc(worse, every),
            "oracle_dmean_threshold_gy": oracle,
            "oracle_sensitivity_at_5_percent_false_alarms": float(np.mean(worse > oracle))}


def separability(standard: list, degraded: list, truth: dict, techniques: dict[str, str],
                 training_techniques: list[str]) -> dict:
    """How far the model's accuracy lets any rule go: the degraded organ's Dmean excess over the
    prediction in its degraded and its standard plan, every organ's in the standard plans, the
    probability that a degraded organ's excess beats a standard organ's (AUC), and the sensitivity of
    a Dmean-only threshold set on the test plans themselves (an oracle) for 5 % false alarms; pooled also
    with the excesses in % of each plan's prescription (the unit plan QA's margins scale in). The same
    per technique (`techniques`: case -> technique of the test plans), with how many training plans
    had it."""
    standard_by_case = {q.case: q for q in standard}
    worse = {q.case: _excess(q, truth[q.case]["organ"]) for q in degraded}
    same_organ = [_excess(standard_by_case[q.case], truth[q.case]["organ"]) for q in degraded]
    every = {q.case: [_excess(q, s.name) for s in q.structures if s.kind == "oar"] for q in standard}
    percent = {q.case: 100.0 / q.reference_dose_gy for q in standard}   # Gy -> % of the case's prescription
    in_percent = _separation([worse[c] * percent[c] for c in standard_by_case if c in worse],
                             [e * percent[c] for c, es in every.items() for e in es])

    def excesses(cases) -> tuple[list[float], list[float]]:   # (degraded organs', standard organs') of these cases
        return [worse[c] for c in cases if c in worse], [e for c in cases for e in every.get(c, [])]
    w, e = excesses(list(standard_by_case))
    by_technique = {}
    for t in sorted(set(techniques.values())):
        tw, te = excesses([c for c, ct in techniques.items() if ct == t])
        by_technique[t] = {"training_plans": training_techniques.count(t), "test_plans": len(tw),
                           "standard_organs_dmean_excess_gy": {"mean": float(np.mean(te)), "sd": float(np.std(te))},
                           **(_separation(tw, te) if tw else {})}
    return {"degraded_organ_dmean_excess_gy": {"mean": float(np.mean(w)), "sd": float(np.std(w))},
            "same_organ_standard_plan_dmean_excess_gy": {"mean": float(np.mean(same_organ)), "sd": float(np.std(same_organ))},
            "standard_organs_dmean_excess_gy": {"mean": float(np.mean(e)), "sd": float(np.std(e))},
            **_separation(w, e),
            "in_percent_of_rx": {"auc_dmean": in_percent["auc_dmean"],
                                 "oracle_dmean_threshold_percent_of_rx": in_percent["oracle_dmean_threshold_gy"],
                                 "oracle_sensitivity_at_5_percent_false_alarms":
                                     in_percent["oracle_sensitivity_at_5_percent_false_alarms"]},
            "by_technique": by_technique}


def _organ_dmean_errors(cases: list[dict]) -> list[float]:
    """Planned - predicted organ mean dose, in % of each case's reference dose (scored cases, score_case)."""
    return [100 * (s["reference"]["Dmean"] - s["prediction"]["Dmean"]) / c["reference_dose_gy"]
            for c in cases for s in c["structures"].values() if s["kind"] == "oar"]


def _validation_scores(cases: list[dict]) -> dict:
    """Dose and DVH score (nndose's aggregate) and the sd of the organ mean-dose error of scored cases."""
    errors = _organ_dmean_errors(cases)
    scores = aggregate(cases) if cases else {"dose_score": None, "dvh_score": None}
    return {"cases": len(cases), "organs": len(errors),
            **{f"{k}_gy": None if scores[k] is None else round(scores[k], 4) for k in ("dose_score", "dvh_score")},
            "organ_dmean_error_sd_percent_of_rx": round(float(np.std(errors)), 3) if errors else None}


def fold_validation(model_dir: Path, folds, first_phantoms: int) -> dict:
    """Each fold's validation scores (_validation_scores); pooled over the folds, of every validation case
    and of phantoms 0..first_phantoms-1 only (so that a run with --extra_training compares with one
    without on the same phantoms)."""
    out, pooled = {}, []
    for fold in folds:
        cases = json.loads((fold_folder(model_dir, fold) / VALIDATION_DIR / SUMMARY_FILE).read_text())["cases"]
        pooled += cases
        out[f"fold_{fold}"] = _validation_scores(cases)
    first = [c for c in pooled if int(c["case"].rsplit("_", 1)[1]) < first_phantoms]
    out["every validation case"] = _validation_scores(pooled)
    out[f"phantoms 0..{first_phantoms - 1}"] = _validation_scores(first)
    return out


def training_dataset(args, work: Path, python: Path | None) -> tuple[int, dict]:
    """The id of the dataset the folds train on, planned and preprocessed (phantoms in the model's style,
    their dose from the chosen engine; one beam channel per delivery with --beam_per_delivery), and what
    was done to make it."""
    made = {"engine": args.engine, "beam_per_delivery": args.beam_per_delivery}
    phantom_raw = find_dataset(raw_root(), DATASET_IDS["phantom_engine"])
    if phantom_raw is None:
        phantom_raw = pipeline.phantoms(DATASET_IDS["phantom_engine"], "QA", args.n, seed=21, num_processes=args.np,
                                        test_fraction=0.0, sites=SITES, modalities=MODALITIES)
        if args.extra_training:
            add_training_phantoms(phantom_raw, EXTRA_FIRST, args.extra_training, 21, args.np)
    held = len(list_cases(phantom_raw, TRAIN_DIR))
    if held != args.n + args.extra_training:
        raise NndoseError(f"the work folder's phantoms are {held}, not --n {args.n} + --extra_training "
                          f"{args.extra_training}: run without --reuse")
    made["extra_training_phantoms"] = args.extra_training
    raw, dataset_id = phantom_raw, DATASET_IDS[args.engine]
    if args.engine == "pyradplan":
        raw = find_dataset(raw_root(), dataset_id)
        refused_file = work / "pyradplan_training_cases_left_out.json"
        if raw is None:
            refused_file.unlink(missing_ok=True)
            raw, _ = replan_dataset(phantom_raw, dataset_id, "QAPyRadPlan", python, args.np)
        made["pyradplan_version"] = pyradplan_version(python)
        made["training_cases_left_out"] = leave_out_refused([raw], refused_file)   # e.g. a hot spot nndose refuses
    if args.beam_per_delivery:
        dataset_id += 1
        raw = pipeline.copy_raw(raw, dataset_id, f"{raw.name.split('_', 1)[1]}_beam_per_delivery")
    preprocessed = find_dataset(preprocessed_root(), dataset_id)
    if not (args.reuse and preprocessed is not None and (preprocessed / PLANS_FILE).is_file()):
        pipeline.plan(dataset_id, args.small_network, num_processes=args.np,
                      **({"beam_per_delivery": True} if args.beam_per_delivery else {}),
                      **({"max_batch": args.max_batch} if args.max_batch is not None else {}))
    return dataset_id, made


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_plan_qa_bench", 60)
    ap.add_argument("--n_test", type=int, default=24, help="held-out phantoms planned twice")
    ap.add_argument("--degradation_percent", type=float, default=5.0, help="mean-dose increase of the degraded organ")
    ap.add_argument("-tr", "--trainer", default="nndoseTrainer", help="trainer class (e.g. nndoseTrainer_MAE_DVH)")
    ap.add_argument("--engine", choices=sorted(DATASET_IDS), default="phantom_engine",
                    help="who plans the training and test phantoms (pyradplan: an independent engine)")
    ap.add_argument("--pyradplan_python", type=Path, default=None, help="a Python with pyRadPlan (default: made)")
    ap.add_argument("--beam_per_delivery", action="store_true", help="one beam channel per delivery")
    ap.add_argument("--first_test", type=int, default=None,
                    help="index of the first held-out phantom (default: right after the training phantoms); "
                         "one past the first test set plans a fresh one beside it, e.g. to confirm a rule chosen on it")
    ap.add_argument("--extra_training", type=int, default=0,
                    help=f"more training phantoms beside the --n: phantoms {EXTRA_FIRST} on (same seed), "
                         "past every test set")
    ap.add_argument("--max_batch", type=int, default=None,
                    help="batch size at most this (e.g. 2 to keep the batch of a smaller training set)")
    ap.add_argument("--validation_only", action="store_true",
                    help="stop after training: the folds' validation (fold_validation), no test plans")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the work folder's dataset, trained folds and test sets (QA again, e.g. after a change of the flag rule)")
    args = ap.parse_args()
    trainer_class(args.trainer)   # an unknown trainer or degradation refused before any phantom is made
    check_increase_percent(args.degradation_percent)
    if args.pyradplan_python is not None and args.engine != "pyradplan":
        raise NndoseError("--pyradplan_python is for --engine pyradplan")
    first_test = args.n if args.first_test is None else args.first_test
    if first_test < args.n:
        raise NndoseError(f"--first_test {first_test} would test on training phantoms (0..{args.n - 1})")
    if args.n < first_test < args.n + args.n_test:
        raise NndoseError(f"--first_test {first_test} would share phantoms with the first test set "
                          f"({args.n}..{args.n + args.n_test - 1}): start at {args.n + args.n_test} or later")
    if args.max_batch is not None:
        pipeline.planner_options(args.small_network, max_batch=args.max_batch)   # a bad one refused before any work
    if args.extra_training < 0 or first_test + args.n_test > EXTRA_FIRST:
        raise NndoseError(f"--extra_training must be >= 0 and the test phantoms end before {EXTRA_FIRST}")
    fresh = "" if first_test == args.n else f"_from_{first_test}"
    python = pyradplan_python(args.pyradplan_python) if args.engine == "pyradplan" else None
    start = time.time()
    work = pipeline.use_work_folder(args.work, keep=args.reuse)
    dataset_id, made = training_dataset(args, work, python)
    raw = require_dataset(raw_root(), dataset_id, "raw")
    for fold in FOLDS:
        model = pipeline.train(dataset_id, args.epochs, args.iterations, args.device, fold=fold, reuse=args.reuse,
                               trainer=args.trainer)
    trained = time.time()
    setup = {"phantoms_trained": args.n + args.extra_training, "dataset": made, "trainer": args.trainer,
             "folds": len(FOLDS), "epochs": args.epochs, "iterations_per_epoch": args.iterations,
             "small_network": args.small_network}
    if args.validation_only:   # how well the folds predict their validation phantoms, without test plans
        pipeline.write_result(args.o, {**setup, "fold_validation": fold_validation(model, FOLDS, args.n),
                                       "seconds": {"train": trained - start}})
        return
    engine_tag = "" if args.engine == "phantom_engine" else f"{args.engine}_"
    sets = work / f"qa_sets_{engine_tag}{args.degradation_percent:g}_percent{fresh}"
    if args.reuse and (sets / "truth.json").is_file():
        truth = json.loads((sets / "truth.json").read_text())
    else:
        shutil.rmtree(sets, ignore_errors=True)
        if args.engine == "pyradplan":
            truth = write_test_sets_pyradplan(first_test, args.n_test, 21, args.degradation_percent, sets, raw, python, args.np)
        else:
            truth = write_test_sets(first_test, args.n_test, 21, args.degradation_percent, sets, args.np)
        (sets / "truth.json").write_text(json.dumps(truth, indent=1))
    if not truth["degraded"]:
        raise NndoseError(f"no test phantom could be made {args.degradation_percent:g} % of Rx worse in one organ")
    predictor = DosePredictor(model, "3d_fullres", folds=list(FOLDS), device=resolve_device(args.device))
    runs = {}
    reports = work / f"reports_{engine_tag}{args.degradation_percent:g}_percent{fresh}{'_beam_per_delivery' * args.beam_per_delivery}"
    for label in ("standard", "degraded"):   # flagged with the default rule: margins from the folds' validation
        runs[label] = plan_qa(list_cases(sets, label), reports / label, predictor, Tolerance(), progress=False)
    oof = validation_cases(model, list(FOLDS))
    every_metric = [m.name for m in OAR_METRICS]
    rules = {"tolerance and folds' interval only (uncalibrated)": (None, None)}
    rules.update({f"calibrated for {100 * rate:g} % false alarms": (calibrate(oof, rate), None) for rate in FALSE_ALARMS})
    rules.update({"tolerance and folds' interval only (uncalibrated), organs flagged on every metric": (None, every_metric),
                  "calibrated for 5 % false alarms, organs flagged on every metric": (calibrate(oof, 0.05, every_metric), None)})
    rules.update({f"calibrated for 5 % false alarms, organs flagged on {' or '.join(m)}": (calibrate(oof, 0.05, m), None)
                  for m in LOW_DOSE_FLAG_METRICS})

    def scored(tolerance: Tolerance, calibration, organ_flag_metrics=None) -> dict:   # the same predictions, flagged again
        rerun = {label: [with_tolerance(q, tolerance, calibration, organ_flag_metrics) for q in qas]
                 for label, qas in runs.items()}
        return score(rerun["standard"], rerun["degraded"], truth["degraded"])
    default = calibrate(oof, DEFAULT_FALSE_ALARM)
    test_techniques = {c.name: technique(load_plan(c / PLAN_FILE)) for c in list_cases(sets, "standard")}
    result = {**setup, "first_test_phantom": first_test, "degradation_percent_of_rx": args.degradation_percent,
              "test_sets": truth, "validation_cases": len(oof),
              "default_rule": scored(Tolerance(), default),
              "separability": separability(runs["standard"], runs["degraded"], truth["degraded"], test_techniques,
                                           [technique(load_plan(c / PLAN_FILE)) for c in list_cases(raw)]),
              "auc_by_metric": metric_aucs(runs["standard"], runs["degraded"], truth["degraded"]),
              "flag_rules": {name: scored(Tolerance(), *rule) for name, rule in rules.items()},
              "calibration": None if default is None else {k: v for k, v in default.to_json().items()
                                                           if k in ("organ_flag_metrics", "levels", "calibration_rate",
                                                                    "margin_units", "margins", "biases", "pooled_margins")}}
    result["fold_validation"] = fold_validation(model, FOLDS, args.n)
    result["tolerance_sweep"] = {rule: {f"{gy:g} Gy / {percent:g} %": scored(Tolerance(gy, percent), cal)
                                        for gy, percent in TOLERANCES}
                                 for rule, cal in (("uncalibrated", None), ("calibrated 5 %", default))}
    result["seconds"] = {"train": trained - start, "total": time.time() - start}
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    run_cli("benchmarks.plan_qa", lambda _argv: main())
