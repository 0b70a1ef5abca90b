"""Does the beam channel help on physics it did not make? The beam-geometry ablation on dose from an
independent engine.

The phantoms' own dose comes from the same rasterizer as the beam channel (nndose.geometry.rasterizer),
so a phantom benchmark flatters the channel. Here the same phantoms (anatomy, prescriptions, beam
arrangement) are planned a second time by pyRadPlan (a Python matRad: photon pencil beams, its own
fluence optimizer; benchmarks/pyradplan_dose.py, run in its own environment). On each engine's dose
the same network and schedule is trained with one beam channel, without it, and with one beam channel
per delivery (--beam_per_delivery), and scored on the held-out phantoms; the gains come with paired
per-case tests. `engine_difference` scores the phantom engine's dose as a prediction of pyRadPlan's:
how different the two physics are.

python -m benchmarks.independent_engine -o benchmarks/results/independent_engine_phantoms_cpu.json \
    --small_network -np 2 --device cpu --n 100 --epochs 40 --iterations 20
The pyRadPlan environment is made on first use (~/.cache/nndose/pyradplan_venv from
benchmarks/requirements-pyradplan.txt) unless --pyradplan_python names one. --reuse keeps the work
folder's phantoms, doses and trained models.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks import pipeline, pyradplan_dose
from benchmarks.pyradplan_runner import leave_out_refused, pyradplan_python, pyradplan_version, replan_dataset
from nndose.cli.common import run_cli
from nndose.io.atomic import atomic_write_json
from nndose.io.layout import DOSE_FILE, NIFTI, TEST_DIR
from nndose.io.raw_dataset import list_cases
from nndose.paths import find_dataset, preprocessed_root, raw_root

ENGINES = {"phantom_engine": 930, "pyradplan": 940}           # dataset ids; + offsets below per variant
VARIANTS = {"with_beam_channel": (0, {}), "without_beam_channel": (1, {"beam_channels": False}),
            "beam_per_delivery": (2, {"beam_per_delivery": True})}


def engine_difference(analytic: Path, pyradplan: Path, work: Path) -> dict:
    """The phantom engine's test doses scored as predictions of pyRadPlan's."""
    out = work / "engine_difference"
    out.mkdir(parents=True, exist_ok=True)
    for case in list_cases(analytic, TEST_DIR):
        shutil.copyfile(case / f"{DOSE_FILE}{NIFTI}", out / f"{case.name}{NIFTI}")
    scores = pipeline.score(list_cases(pyradplan, TEST_DIR), pyradplan, out)
    return {k: scores[k] for k in ("dose_score_gy", "dvh_score_gy", "mae_percent_of_prescription", "isodose_dice")}


def run_engine(engine: str, raw: Path, args) -> dict:
    """Train and score every variant on one engine's dose."""
    base_id = ENGINES[engine]
    result = {}
    for variant, (offset, options) in VARIANTS.items():
        dataset_id = base_id + offset
        folder = raw if offset == 0 else pipeline.copy_raw(raw, dataset_id, f"{raw.name.split('_', 1)[1]}_{variant}")
        if find_dataset(preprocessed_root(), dataset_id) is None:
            pipeline.plan(dataset_id, args.small_network, num_processes=args.np, **options)
        model = pipeline.train(dataset_id, args.epochs, args.iterations, args.device, reuse=args.reuse)
        result[variant] = pipeline.predict_and_score(model, list_cases(folder, TEST_DIR), folder,
                                                     args.work / "pred" / engine / variant, args.device)
    result["gain_of_beam_channel"] = pipeline.gain_over(result["without_beam_channel"], result["with_beam_channel"])
    result["gain_of_beam_per_delivery"] = pipeline.gain_over(result["with_beam_channel"], result["beam_per_delivery"])
    return result


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_independent_engine", 100)
    ap.add_argument("--pyradplan_python", type=Path, default=None, help="a Python with pyRadPlan (default: made)")
    ap.add_argument("--reuse", action="store_true", help="keep the work folder's phantoms, doses and models")
    ap.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=["pyradplan", "phantom_engine"],
                    help="whose dose the variants are trained on")
    args = ap.parse_args()
    start = time.time()
    python = pyradplan_python(args.pyradplan_python)
    version = pyradplan_version(python)
    pipeline.use_work_folder(args.work, keep=args.reuse)
    analytic = find_dataset(raw_root(), ENGINES["phantom_engine"])
    if analytic is None:
        analytic = pipeline.phantoms(ENGINES["phantom_engine"], "PhantomEngine", args.n, seed=7, num_processes=args.np)
    records_file = args.work / "pyradplan_cases.json"
    pyradplan = find_dataset(raw_root(), ENGINES["pyradplan"])
    refused_file = args.work / "training_cases_left_out.json"
    if pyradplan is None or not records_file.is_file():
        refused_file.unlink(missing_ok=True)
        t0 = time.time()
        pyradplan, records = replan_dataset(analytic, ENGINES["pyradplan"], "PyRadPlan", python, args.np)
        atomic_write_json(records_file, {"records": records, "seconds": time.time() - t0})
    replanned = json.loads(records_file.read_text())
    refused = leave_out_refused([analytic, pyradplan], refused_file)
    result = {"setup": {"n_phantoms": args.n, "held_out": len(list_cases(analytic, TEST_DIR)), "seed": 7,
                        "epochs": args.epochs, "iterations_per_epoch": args.iterations,
                        "network": "CPU plan (--small_network)" if args.small_network else "default plan",
                        "pyradplan_version": version, "pyradplan_plan": pyradplan_dose.__doc__.split("\n\n")[2].replace("\n", " "),
                        "pyradplan_priorities": {"target": pyradplan_dose.TARGET_PRIORITY,
                                                 "organ_mean": pyradplan_dose.OAR_MEAN_PRIORITY,
                                                 "organ_max": pyradplan_dose.OAR_MAX_PRIORITY,
                                                 "body_max": pyradplan_dose.BODY_MAX_PRIORITY},
                        "training_cases_left_out": refused,
                        "pyradplan_seconds": replanned["seconds"], "pyradplan_cases": replanned["records"]},
              "engine_difference": engine_difference(analytic, pyradplan, args.work)}
    for engine, raw in (("pyradplan", pyradplan), ("phantom_engine", analytic)):
        if engine not in args.engines:
            continue
        result[engine] = run_engine(engine, raw, args)
        result["seconds"] = time.time() - start
        pipeline.write_result(args.o, result)   # each engine's rows as soon as they are measured


if __name__ == "__main__":
    run_cli("benchmarks.independent_engine", lambda _argv: main())   # an NndoseError is one line, exit 2
