"""Beam-geometry ablation: the same phantoms (varied beam arrangements: IMRT at random gantry
angles, full and partial VMAT arcs, 3D-CRT boxes and opposed fields, 6 and 10 MV, SAD 800 and
1000 mm) planned with and without the beam channel, trained identically, scored on the held-out
phantoms. Writes JSON.

python benchmarks/beam_ablation.py -o benchmarks/results/beam_ablation_<machine>.json [--n 80 --epochs 40 --iterations 50]
"""
from __future__ import annotations

import time

from benchmarks import pipeline
from nndose.cli.common import run_cli
from nndose.io.layout import TEST_DIR
from nndose.io.raw_dataset import list_cases


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_beam_ablation", 80)
    args = ap.parse_args()
    start = time.time()
    pipeline.use_work_folder(args.work)
    raw = pipeline.phantoms(910, "Beams", args.n, seed=7, num_processes=args.np)
    raw_nobeam = pipeline.copy_raw(raw, 911, "NoBeams")
    pipeline.plan(910, args.small_network, num_processes=args.np)
    pipeline.plan(911, args.small_network, num_processes=args.np, beam_channels=False)
    result = {"n_phantoms": args.n, "epochs": args.epochs, "iterations_per_epoch": args.iterations}
    for key, dataset_id, folder in (("with_beam_channels", 910, raw), ("without_beam_channels", 911, raw_nobeam)):
        model = pipeline.train(dataset_id, args.epochs, args.iterations, args.device)
        result[key] = pipeline.predict_and_score(model, list_cases(folder, TEST_DIR), folder,
                                                 args.work / "pred" / key, args.device)
    result["seconds"] = time.time() - start
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    run_cli("benchmarks.beam_ablation", lambda _argv: main())   # an NndoseError is one line, exit 2
