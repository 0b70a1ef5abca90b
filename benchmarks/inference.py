"""Inference speed and peak memory for one OpenKBP case (128^3) with the default OpenKBP plan: the
validation patient with the largest body (the most sliding-window steps), planned from all 33.

Rows (each in its own process, so each peak memory is its own):
  nndose_1fold / nndose_1fold_tta / nndose_5folds_tta: whole nndose_predict path for one case
      (preprocessing, sliding window, mirroring, fold ensemble, resampling back), seconds per case;
  network_1fold: nndose's sliding window alone on the preprocessed case;
  monai_1fold: MONAI's sliding_window_inference (Gaussian blending, overlap 0.5, its default of one
      window per forward pass) over the same network and input: the reference loop; ratio =
      network_1fold / monai_1fold; monai_1fold_same_batch: the same with as many windows per forward
      pass as nndose takes (ratio_same_batch);
  nndose_1fold_512x512x200: the same patient resampled onto a 512x512x200 CT grid (0.98 mm
      in-plane): peak memory of a clinical-size grid.
The network has random weights (speed does not depend on them). Needs the OpenKBP archives
(default ../shared/data/openkbp) for the plan and the case; MONAI for the reference row.

python -m benchmarks.inference -o benchmarks/results/inference_<machine>.json [--device cpu|cuda] [--small_network]
--small_network plans the demo's CPU-sized network instead (many small windows, several per forward pass).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nndose.cli.common import OneLineParser, run_cli

REPO = Path(__file__).resolve().parents[1]
ROWS = ("network_1fold", "monai_1fold", "monai_1fold_same_batch", "nndose_1fold", "nndose_1fold_tta", "nndose_5folds_tta",
        "nndose_1fold_512x512x200")
LARGE_SHAPE_ZYX = (200, 512, 512)


def setup(work: Path, archives: Path, small_network: bool = False) -> None:
    """The OpenKBP validation patients as a dataset, its default plan, a 5-fold model folder, and the
    name of the patient with the largest body (work/case.txt)."""
    import torch

    from nndose.datasets.openkbp import convert_openkbp
    from nndose.datasets.openkbp_archives import extract_patients
    from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
    from nndose.experiment_planning.planner import CPU_PLANNER, PlannerOptions
    from nndose.io.checkpoints import save_checkpoint
    from nndose.io.layout import CHECKPOINT_FINAL, DATASET_JSON, MODEL_PLANS_FILE, PLANS_FILE, fold_folder
    from nndose.networks import build_network
    from nndose.paths import ENV_VARIABLES
    from nndose.plans import load_plans

    shutil.rmtree(work, ignore_errors=True)
    for var in ENV_VARIABLES:
        os.environ[var] = str(work / var)
    patients = extract_patients(archives / "openkbp-validation.tar.xz", work / "csv")
    raw = work / "nndose_raw" / "Dataset950_OpenKBPSpeed"
    convert_openkbp(patients[0].parent, raw, num_processes=1, progress=False)
    plan_and_preprocess(950, CPU_PLANNER if small_network else PlannerOptions(),
                        PreprocessingRun(num_processes=1, plan_only=True))
    pre = work / "nndose_preprocessed" / raw.name
    plans = load_plans(pre / PLANS_FILE)
    model = work / "model"
    model.mkdir()
    shutil.copy(pre / PLANS_FILE, model / MODEL_PLANS_FILE)
    shutil.copy(raw / DATASET_JSON, model / DATASET_JSON)
    case = _largest_case(raw)
    (work / "case.txt").write_text(case.name)
    _large_case(case, raw.parent / "large")
    conf = plans.configuration("3d_fullres")
    for fold in range(5):
        torch.manual_seed(fold)
        net = build_network(conf)
        save_checkpoint(fold_folder(model, str(fold)) / CHECKPOINT_FINAL,
                        {"network": net.state_dict(), "channels": list(conf.channels)})


def _largest_case(raw: Path) -> Path:
    """The case whose body has the most voxels: the slowest to predict."""
    from nndose.io.layout import STRUCTURES_DIR, TRAIN_DIR
    from nndose.io.raw_dataset import list_cases, load_dataset_json
    from nndose.io.volumes import read_volume
    info = load_dataset_json(raw)
    sizes = {c: int(read_volume(c / STRUCTURES_DIR / f"{info.body}{info.file_ending}")[0].sum())
             for c in list_cases(raw, TRAIN_DIR)}
    return max(sizes, key=sizes.get)


def _large_case(case: Path, large: Path) -> None:
    """The case resampled onto a 512x512x200 grid covering the same field of view (large/<case>)."""
    import SimpleITK as sitk

    from nndose.io.layout import CT_FILE, NIFTI, PLAN_FILE, STRUCTURES_DIR
    dest = large / case.name
    (dest / STRUCTURES_DIR).mkdir(parents=True)
    shutil.copy(case / PLAN_FILE, dest / PLAN_FILE)
    ct_name = f"{CT_FILE}{NIFTI}"
    ref_img = sitk.ReadImage(str(case / ct_name))
    size = ref_img.GetSize()
    spacing = [sp * n / m for sp, n, m in zip(ref_img.GetSpacing(), size, LARGE_SHAPE_ZYX[::-1])]
    ref = sitk.Image(*LARGE_SHAPE_ZYX[::-1], sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetOrigin(ref_img.TransformContinuousIndexToPhysicalPoint([-0.5 + 0.5 * s / ref_img.GetSpacing()[i] for i, s in enumerate(spacing)]))
    ref.SetDirection(ref_img.GetDirection())
    for src in [case / ct_name, *sorted((case / STRUCTURES_DIR).glob(f"*{NIFTI}"))]:
        img = sitk.ReadImage(str(src))
        interp = sitk.sitkLinear if src.name == ct_name else sitk.sitkNearestNeighbor
        out = sitk.Resample(img, ref, sitk.Transform(), interp, -1024 if src.name == ct_name else 0, img.GetPixelID())
        sitk.WriteImage(out, str(dest / src.relative_to(case)), useCompression=True)


def run_row(work: Path, row: str, device_name: str) -> dict:
    import torch

    from nndose.inference.predictor import DosePredictor
    from nndose.inference.sliding_window import sliding_window, window_starts, windows_per_forward
    from nndose.io.layout import TRAIN_DIR
    from nndose.io.raw_dataset import load_case
    from nndose.preprocessing.channels import channel_pad_values

    device = torch.device(device_name)
    folds = ["0", "1", "2", "3", "4"] if row == "nndose_5folds_tta" else ["0"]
    predictor = DosePredictor(work / "model", "3d_fullres", folds=folds, device=device, use_tta=row.endswith("_tta"))
    name = (work / "case.txt").read_text()
    case_dir = work / "nndose_raw" / ("large" if row.endswith("512x512x200") else "Dataset950_OpenKBPSpeed/" + TRAIN_DIR) / name
    case = load_case(case_dir, predictor.info, require_dose=False)
    patch = predictor.conf.patch_size_zyx
    net = predictor.networks[0]
    data, _ = predictor.preprocess(case)
    image = torch.from_numpy(data).to(device)
    amp = device.type == "cuda"

    def forward(x):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            return net(x).float()

    forward(torch.zeros(1, image.shape[0], *patch, device=device))          # warm-up: one patch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    if row == "network_1fold":
        sliding_window(forward, image, patch, 0.5, channel_pad_values(predictor.conf.channels, predictor.plans.ct_normalization))
    elif row.startswith("monai_1fold"):
        from monai.inferers import sliding_window_inference
        batch = windows_per_forward(patch) if row.endswith("same_batch") else 1
        with torch.no_grad():
            sliding_window_inference(image[None], patch, batch, forward, overlap=0.5, mode="gaussian")
    else:
        predictor.predict_case(case)
    sync()
    seconds = time.perf_counter() - start
    return {"row": row, "seconds": seconds, "case": name, "case_shape_zyx": list(case.grid.shape_zyx),
            "preprocessed_shape_zyx": list(data.shape[1:]),
            "windows": len(window_starts(data.shape[1:], patch)),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None}


def main() -> None:
    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nndose_inference_bench"))
    ap.add_argument("--openkbp", type=Path, default=REPO.parent / "shared" / "data" / "openkbp")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--small_network", action="store_true", help="the demo's CPU-sized plan instead of the default")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.row:
        print("ROW " + json.dumps(run_row(args.work, args.row, device)))
        return
    if args.o is None:
        ap.error("-o is required")
    setup(args.work, args.openkbp, args.small_network)
    env = dict(os.environ, nndose_raw=str(args.work / "nndose_raw"))
    rows = {}
    for row in args.rows:
        out = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--work", str(args.work), "--row", row,
                              "--device", device], cwd=REPO, env=env, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
        if out.returncode or line is None:
            raise SystemExit(f"row {row} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        rows[row] = json.loads(line[4:])
        print(f"{row:20s} {rows[row]['seconds']:8.2f} s  peak RSS {rows[row]['peak_rss_gib']:.2f} GiB", flush=True)
    from nndose.inference.sliding_window import windows_per_forward
    from nndose.io.layout import MODEL_PLANS_FILE
    from nndose.plans import load_plans
    conf = load_plans(args.work / "model" / MODEL_PLANS_FILE).configuration("3d_fullres")
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": device,
                          "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None},
              "plan": {"small_network": args.small_network, "patch_size_zyx": list(conf.patch_size_zyx),
                       "windows_per_forward": windows_per_forward(conf.patch_size_zyx), "monai_sw_batch_size": 1,
                       "network": conf.network.to_json(), "channels": len(conf.channels)},
              "rows": rows}
    if "network_1fold" in rows and "monai_1fold" in rows:
        result["network_over_monai"] = rows["network_1fold"]["seconds"] / rows["monai_1fold"]["seconds"]
    if "network_1fold" in rows and "monai_1fold_same_batch" in rows:
        result["network_over_monai_same_batch"] = rows["network_1fold"]["seconds"] / rows["monai_1fold_same_batch"]["seconds"]
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    run_cli("benchmarks.inference", lambda _argv: main())   # an NndoseError is one line, exit 2
