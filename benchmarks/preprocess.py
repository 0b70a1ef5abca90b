"""Preprocessing throughput: nndose_plan_and_preprocess on the OpenKBP training set with one
process and with every core; cases per second and the peak memory of the largest process.

python -m benchmarks.preprocess -o benchmarks/results/preprocess_<machine>.json [--n 169]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.openkbp import patient_folders
from nndose.cli.common import run_cli
from nndose.datasets.openkbp import convert_openkbp
from nndose.paths import ENV_VARIABLES

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--openkbp", type=Path, default=REPO.parent / "shared" / "data" / "openkbp")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nndose_preprocess_bench"))
    ap.add_argument("--n", type=int, help="only the first N training patients (default all)")
    ap.add_argument("--row", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
        plan_and_preprocess(970, run=PreprocessingRun(configurations=("3d_fullres",), num_processes=args.row))
        peak = max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        print(f"PEAK_KIB {peak}")
        return
    shutil.rmtree(args.work, ignore_errors=True)
    env = dict(os.environ, **{v: str(args.work / v) for v in ENV_VARIABLES})
    train = patient_folders(args.openkbp, args.work, "train")
    if args.n:
        subset = args.work / "csv" / "subset"
        subset.mkdir(parents=True)
        for name in sorted(p.name for p in train.iterdir() if p.name.startswith("pt_"))[: args.n]:
            (subset / name).symlink_to(train / name)
        train = subset
    cores = os.cpu_count() or 1
    start = time.time()
    names = convert_openkbp(train, args.work / "nndose_raw" / "Dataset970_OpenKBP", num_processes=cores)
    result = {"cases": len(names), "cpu_count": cores, "convert_seconds_all_cores": time.time() - start, "rows": {}}
    for processes in sorted({1, cores}):
        shutil.rmtree(args.work / "nndose_preprocessed", ignore_errors=True)
        start = time.time()
        out = subprocess.run([sys.executable, "-m", "benchmarks.preprocess", "-o", str(args.o), "--row", str(processes)],
                             env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
        seconds = time.time() - start
        peak = int(out.split("PEAK_KIB ")[1].split()[0])
        result["rows"][f"{processes}_process{'es' if processes > 1 else ''}"] = {
            "seconds": seconds, "cases_per_second": len(names) / seconds,
            "peak_rss_largest_process_gib": peak / 2 ** 20,
            "note": "fingerprint + plan + preprocess of 3d_fullres"}
        print(f"-np {processes}: {seconds:.1f} s, {len(names) / seconds:.2f} cases/s", flush=True)
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_cli("benchmarks.preprocess", lambda _argv: main())   # an NndoseError is one line, exit 2
