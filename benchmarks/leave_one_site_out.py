"""Leave-one-site-out: train once without a site and once with every site, then predict the site's
held-out phantoms with both; report MAE as a percentage of the prescription (nnDoseNetv2's measure)
and the OpenKBP scores. Writes JSON.

python benchmarks/leave_one_site_out.py --site liver -o benchmarks/results/loso_liver_<machine>.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import pipeline
from nndose.io.plan_file import load_plan
from nndose.io.raw_dataset import TEST_DIR, list_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--site", default="liver")
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nndose_loso"))
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small_network", action="store_true")
    ap.add_argument("-np", type=int, default=8)
    args = ap.parse_args()
    start = time.time()
    pipeline.use_work_folder(args.work)
    raw = pipeline.phantoms(920, "Sites", args.n, seed=11, num_processes=args.np)
    pipeline.plan(920, args.small_network, num_processes=args.np)
    site_cases = [c for c in list_cases(raw, TEST_DIR) if load_plan(c / "plan.json").site == args.site]
    result = {"site": args.site, "n_phantoms": args.n, "test_cases_of_site": len(site_cases),
              "epochs": args.epochs, "iterations_per_epoch": args.iterations}
    for key, excluded in (("site_unseen", (args.site,)), ("site_seen", ())):
        model = pipeline.train(920, args.epochs, args.iterations, args.device, excluded)
        result[key] = pipeline.predict_and_score(model, site_cases, raw, args.work / "pred" / key, args.device)
    result["seconds"] = time.time() - start
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
