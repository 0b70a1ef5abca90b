"""Training and sliding-window inference speed of a preprocessed dataset's plan on this machine.

python benchmarks/training_speed.py --preprocessed $nndose_preprocessed/Dataset900_Phantoms -c 3d_fullres \
    --iterations 30 -o benchmarks/results/training_speed_<machine>.json
Writes JSON: device, AMP, seconds per training iteration (after warm-up), samples per second, peak GPU
memory, and seconds to predict one preprocessed case with and without mirroring.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from nndose.cli.common import run_cli
from nndose.io.layout import PLANS_FILE
from nndose.plans import load_plans
from nndose.preprocessing.storage import list_preprocessed_cases, load_case
from nndose.training.trainer import TrainerSettings, nndoseTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preprocessed", type=Path, required=True)
    ap.add_argument("-c", default="3d_fullres")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("-o", type=Path, required=True)
    ap.add_argument("--no_compile", action="store_true", help="eager mode on CUDA (compare with torch.compile)")
    args = ap.parse_args()
    if args.no_compile:
        os.environ["nndose_compile"] = "0"
    device = torch.device(args.device)
    plans = load_plans(args.preprocessed / PLANS_FILE)
    conf = plans.configuration(args.c)
    with tempfile.TemporaryDirectory() as out:
        t = nndoseTrainer(plans, args.c, "all", args.preprocessed, Path(out), device,
                          TrainerSettings(epochs=1, iterations_per_epoch=args.iterations))
        t.initialize()
        loader = iter(t._loader(t.train_cases, t.get_training_transforms(), 0))
        batches = [next(loader) for _ in range(min(args.iterations, 8))]
        load_start = time.time()
        for _ in range(8):
            next(loader)
        load_s = (time.time() - load_start) / 8
        for i in range(args.warmup):
            t.train_step(batches[i % len(batches)][0].to(device), batches[i % len(batches)][1].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.time()
        for i in range(args.iterations):
            image, target, _ = batches[i % len(batches)]
            t.train_step(image.to(device), target.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = (time.time() - start) / args.iterations
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
        from nndose.inference.sliding_window import sliding_window
        from nndose.inference.mirroring import lateral_pairs, mirror_lr
        case = list_preprocessed_cases(args.preprocessed / conf.data_identifier)[0]
        data, _, _ = load_case(args.preprocessed / conf.data_identifier, case, mmap=False)
        image = torch.from_numpy(data).to(device)
        net = t.network.eval()

        def run(x):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                return net(x).float()
        timings = {}
        for tta in (False, True):
            sliding_window(run, image, conf.patch_size_zyx)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            s = time.time()
            sliding_window(run, image, conf.patch_size_zyx)
            if tta:
                sliding_window(run, mirror_lr(image, lateral_pairs(list(conf.channels))), conf.patch_size_zyx)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings["predict_one_case_tta_s" if tta else "predict_one_case_s"] = time.time() - s
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "amp": device.type == "cuda",
              "torch_compile": device.type == "cuda" and not args.no_compile, "config": args.c,
              "patch_size_zyx": list(conf.patch_size_zyx), "batch_size": conf.batch_size,
              "features_per_stage": list(conf.network.features_per_stage), "iterations_timed": args.iterations,
              "seconds_per_iteration": step_s, "samples_per_second": conf.batch_size / step_s,
              "data_loading_seconds_per_batch_single_process": load_s, "peak_gpu_memory_gib": peak,
              "case_shape_zyx": list(data.shape[1:]), **timings}
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_cli("benchmarks.training_speed", lambda _argv: main())   # an NndoseError is one line, exit 2
