"""Training batches per second that the data pipeline delivers (patch sampling, cascade dose masks,
augmentation) at several worker counts, against the training step time, so that it is visible
when loading is the bottleneck.

python -m benchmarks.dataloader --preprocessed $nndose_preprocessed/Dataset001_OpenKBP -o benchmarks/results/dataloader_<machine>.json \
    [--workers 0 2 4 8 16] [--step_ms 40.9]
The step time is measured here when CUDA is present (AMP training steps on one fixed batch);
otherwise pass the GPU's from benchmarks/results/training_speed_*.json with --step_ms.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from nndose.cli.common import run_cli
from nndose.io.layout import PLANS_FILE
from nndose.plans import load_plans
from nndose.training.trainer import TrainerSettings, nndoseTrainer


def _trainer(args, out: Path, workers: int, device: torch.device) -> nndoseTrainer:
    plans = load_plans(args.preprocessed / PLANS_FILE)
    t = nndoseTrainer(plans, args.c, "all", args.preprocessed, out, device,
                      TrainerSettings(epochs=1, iterations_per_epoch=1, num_workers=workers))
    t.initialize()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preprocessed", type=Path, required=True)
    ap.add_argument("-c", default="3d_fullres")
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--step_ms", type=float, help="training step time to compare with (default: measured on CUDA)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"cpu_count": os.cpu_count(), "device": str(device), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        step_ms = args.step_ms
        if step_ms is None and device.type == "cuda":
            t = _trainer(args, Path(tmp) / "step", 0, device)
            image, target, _ = next(iter(t._loader(t.train_cases, t.get_training_transforms(), 0)))
            image, target = image.to(device), target.to(device)
            for _ in range(5):
                t.train_step(image, target)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                t.train_step(image, target)
            torch.cuda.synchronize()
            step_ms = (time.perf_counter() - start) / 20 * 1000
        result["step_ms"] = step_ms
        for workers in args.workers:
            t = _trainer(args, Path(tmp) / f"w{workers}", workers, torch.device("cpu"))
            start = time.perf_counter()
            loader = iter(t._loader(t.train_cases, t.get_training_transforms(), 0))
            next(loader)
            startup = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(args.batches):
                next(loader)
            per_s = args.batches / (time.perf_counter() - start)
            row = {"batches_per_second": per_s, "startup_seconds": startup, "batch_size": t.conf.batch_size}
            if step_ms:
                row["loading_keeps_up"] = per_s >= 1000.0 / step_ms
            result["rows"][str(workers)] = row
            print(f"{workers:3d} workers: {per_s:7.2f} batches/s (start-up {startup:.1f} s)", flush=True)
            del loader
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_cli("benchmarks.dataloader", lambda _argv: main())   # an NndoseError is one line, exit 2
