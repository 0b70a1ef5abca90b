"""Leave-one-site-out: train once without a site and once with every site, then predict the site's
held-out phantoms with both; report MAE as a percentage of the prescription (nnDoseNetv2's measure)
and the OpenKBP scores. Writes JSON.

python benchmarks/leave_one_site_out.py --site liver -o benchmarks/results/loso_liver_<machine>.json
"""
from __future__ import annotations

import time

from benchmarks import pipeline
from nndose.cli.common import run_cli
from nndose.io.plan_file import load_plan
from nndose.io.layout import PLAN_FILE, TEST_DIR
from nndose.io.raw_dataset import list_cases


def main() -> None:
    ap = pipeline.phantom_benchmark_parser(__doc__, "/tmp/nndose_loso", 80)
    ap.add_argument("--site", default="liver")
    args = ap.parse_args()
    start = time.time()
    pipeline.use_work_folder(args.work)
    raw = pipeline.phantoms(920, "Sites", args.n, seed=11, num_processes=args.np)
    pipeline.plan(920, args.small_network, num_processes=args.np)
    site_cases = [c for c in list_cases(raw, TEST_DIR) if load_plan(c / PLAN_FILE).site == args.site]
    result = {"site": args.site, "n_phantoms": args.n, "test_cases_of_site": len(site_cases),
              "epochs": args.epochs, "iterations_per_epoch": args.iterations}
    for key, excluded in (("site_unseen", (args.site,)), ("site_seen", ())):
        model = pipeline.train(920, args.epochs, args.iterations, args.device, excluded)
        result[key] = pipeline.predict_and_score(model, site_cases, raw, args.work / "pred" / key, args.device)
    result["seconds"] = time.time() - start
    pipeline.write_result(args.o, result)


if __name__ == "__main__":
    run_cli("benchmarks.leave_one_site_out", lambda _argv: main())   # an NndoseError is one line, exit 2
